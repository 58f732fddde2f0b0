//! The periodic re-check of what a lost notice or a cut-off sweep can leave
//! wrong in this gateway's rooms.
//!
//! Two facts reach a gateway through channels that can lose them:
//! - **Bans** arrive as one best-effort pub/sub notice. A notice published
//!   while the gateway's subscription is being re-established, or dropped on
//!   a full delivery buffer, is gone, and the banned socket would go on
//!   chatting (issue 23 path 8). The contract: a ban reaches every connection
//!   of the banned user within 10 s even when its notice is lost.
//! - **This gateway's registration** in a room (its count in the room's
//!   gateway hash, which workers publish by) is removed by the janitor when
//!   it judges the gateway dead. The heartbeat re-registers everything when
//!   the janitor says so (see `presence::heartbeat`), but a removal that runs
//!   late (a stalled request that reaches Redis after the janitor gave up on
//!   it) comes after every such signal (issue 23 path 4).
//!
//! So every `RECHECK_INTERVAL_MS` (at most 9 s), and at once after the
//! delivery subscription is re-established, the gateway asks Redis about
//! every room it holds, in pipelines of [`ROOMS_PER_ROUND_TRIP`] rooms: for
//! each room one `HEXISTS` of its own count and, when bans are enabled, one
//! `MGET` of the ban keys of the room's local users (they share the room's
//! slot). A banned user's connections close with 4003 as the notice would
//! have done; a room whose registration is gone is registered again and its
//! connections catch up from history.

use std::time::Duration;

use chat_shared::ephemeral::PresenceKind;
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::presence::PresenceUser;
use chat_shared::redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::rooms::{bans, presence, presence_events};
use crate::state::AppState;

/// Rooms asked about per pipeline: one round trip stays short even for a
/// gateway with many rooms.
pub const ROOMS_PER_ROUND_TRIP: usize = 200;

/// Re-checks every `every`, and whenever the delivery subscription is
/// re-established, until `stop`.
pub async fn run(state: AppState, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; nothing is held yet.
    tick.tick().await;
    let resubscribed = state.subscription.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = resubscribed.resubscribed() => {}
            () = stop.cancelled() => break,
        }
        if let Err(e) = recheck(&state).await {
            metrics::counter!(m::GW_REDIS_ERRORS, "op" => "recheck").increment(1);
            tracing::warn!(error = %e, "Room re-check failed; retrying next interval");
        }
    }
}

/// One local room as the re-check sees it.
struct Held {
    room: RoomId,
    conns: Vec<(u64, PresenceUser)>,
    /// Distinct user keys of `conns`.
    users: Vec<String>,
}

/// Runs one re-check of every local room.
///
/// # Errors
/// Fails when Redis does not answer; what earlier pipelines found was acted on.
pub async fn recheck(state: &AppState) -> Result<(), RedisError> {
    let with_bans = bans::enabled(state);
    let held: Vec<Held> = state
        .rooms
        .members()
        .into_iter()
        .filter_map(|(room, conns)| {
            let room = RoomId::parse(&room).ok()?;
            let mut users: Vec<String> = conns.iter().map(|(_, u)| u.key.clone()).collect();
            users.sort_unstable();
            users.dedup();
            Some(Held { room, conns, users })
        })
        .collect();
    for chunk in held.chunks(ROOMS_PER_ROUND_TRIP) {
        let mut pipe = redis::pipe();
        for h in chunk {
            pipe.cmd("HEXISTS")
                .arg(keys::room_gateways(&h.room))
                .arg(&state.gateway_id);
            if with_bans {
                let bans: Vec<String> = h.users.iter().map(|u| keys::ban(&h.room, u)).collect();
                pipe.cmd("MGET").arg(bans);
            }
        }
        let replies: Vec<redis::Value> = state.redis.pipe(&pipe).await?;
        let mut replies = replies.into_iter();
        let mut lost = Vec::new();
        for h in chunk {
            let registered: bool = parse(replies.next())?;
            if with_bans {
                let bans: Vec<Option<String>> = parse(replies.next())?;
                for (user, ban) in h.users.iter().zip(bans) {
                    if ban.is_some() {
                        enforce_ban(state, &h.room, user);
                    }
                }
            }
            if !registered {
                lost.push(h);
            }
        }
        if !lost.is_empty() {
            restore(state, &lost).await?;
        }
    }
    Ok(())
}

fn parse<T: redis::FromRedisValue>(v: Option<redis::Value>) -> Result<T, RedisError> {
    let v = v.ok_or_else(|| {
        RedisError::Command(redis::ParsingError::from("a re-check reply is missing").into())
    })?;
    T::from_redis_value(v).map_err(|e| RedisError::Command(e.into()))
}

/// Closes `user`'s connections in `room` with 4003, as the ban's notice
/// would have (a connection the notice already reached is closing anyway).
fn enforce_ban(state: &AppState, room: &RoomId, user: &str) {
    let closed = state.rooms.ban(room.as_str(), user);
    if closed > 0 {
        metrics::counter!(m::GW_BANS, "op" => "rechecked").increment(closed as u64);
        tracing::info!(room = %room, user, closed, "Ban enforced by the re-check");
    }
}

/// Registers the connections of rooms that lost this gateway's entries,
/// removes again those that closed meanwhile (so no ghost member stays),
/// lets the rest catch up from history, and announces users that joined
/// again.
async fn restore(state: &AppState, lost: &[&Held]) -> Result<(), RedisError> {
    let (redis, gateway) = (&state.redis, state.gateway_id.as_str());
    tracing::warn!(
        rooms = lost.len(),
        "Rooms lost this gateway's registration; restoring them"
    );
    let members: Vec<(String, Vec<(String, PresenceUser)>)> = lost
        .iter()
        .map(|h| {
            let conns = h
                .conns
                .iter()
                .map(|(id, user)| (presence::conn_key(*id), user.clone()))
                .collect();
            (h.room.to_string(), conns)
        })
        .collect();
    let joined = presence::restore_connections(redis, gateway, &members).await?;
    for (room, users) in joined {
        presence_events::announce(state, &room, PresenceKind::Join, &users).await;
    }
    for h in lost {
        let still = state.rooms.conn_ids(h.room.as_str());
        for (id, _) in h.conns.iter().filter(|(id, _)| !still.contains(id)) {
            let conn = presence::conn_key(*id);
            let removed = presence::remove_connection(redis, gateway, &h.room, &conn).await?;
            presence_events::announce(state, &h.room, PresenceKind::Leave, &removed.left).await;
        }
        state.rooms.resync_room(h.room.as_str());
    }
    Ok(())
}
