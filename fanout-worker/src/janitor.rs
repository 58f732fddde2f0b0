//! Cleanup of rooms and connections, run by one worker at a time.
//!
//! Holding the `chat:lease:{janitor}` lease, a worker periodically:
//! - treats gateways whose heartbeat in `chat:gateways` is older than
//!   `GATEWAY_TIMEOUT_MS` (or that have none) as dead, and removes their members
//!   from `connections:<room>` and their counts from the room's gateway hash, so
//!   workers stop publishing to them (a wrongly judged live gateway notices on its
//!   next heartbeat and re-registers);
//! - removes from `rooms:active` rooms with no connection and no history.
//!
//! History itself expires by TTL (`HISTORY_TTL`, refreshed per message) and is
//! trimmed on every write, so there is nothing else to delete.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chat_shared::envelope::now_us;
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::lease::Leases;
use crate::Context;

/// The janitor's lease key.
const JANITOR_LEASE: &str = "chat:lease:{janitor}";

/// Runs sweeps while holding the janitor lease, until `shutdown`.
pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let every = Duration::from_millis(ctx.config.janitor_interval_ms);
    let leases = Leases::new(ctx.redis.clone(), ctx.worker_id.clone(), every * 3);
    let mut holding = false;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let held = if holding {
            leases.renew_key(JANITOR_LEASE).await
        } else {
            leases.acquire_key(JANITOR_LEASE).await
        };
        match held {
            Ok(h) => {
                if h && !holding {
                    tracing::info!("Janitor lease acquired");
                }
                holding = h;
            }
            Err(e) => {
                holding = false;
                tracing::warn!(error = %e, "Janitor lease check failed");
                continue;
            }
        }
        if !holding {
            continue;
        }
        if let Err(e) = sweep(&ctx).await {
            metrics::counter!(m::WK_REDIS_ERRORS, "op" => "janitor").increment(1);
            tracing::warn!(error = %e, "Janitor sweep failed");
        }
    }
    if holding {
        let _ = leases.release_key(JANITOR_LEASE).await;
    }
}

async fn sweep(ctx: &Context) -> Result<(), RedisError> {
    let redis = &ctx.redis;
    let now_ms = now_us() / 1000;
    let cutoff = now_ms - ctx.config.gateway_timeout_ms as i64;
    let beats: HashMap<String, i64> = redis
        .query(redis::cmd("HGETALL").arg(keys::GATEWAYS))
        .await?;
    let is_dead = |gw: &str| beats.get(gw).is_none_or(|&t| t < cutoff);

    let rooms: Vec<String> = redis
        .query(redis::cmd("SMEMBERS").arg(keys::ROOMS_ACTIVE))
        .await?;
    let mut removed_conns = 0usize;
    let mut removed_rooms = 0usize;
    for chunk in rooms.chunks(200) {
        let rooms: Vec<RoomId> = chunk.iter().filter_map(|r| RoomId::parse(r).ok()).collect();
        let mut pipe = redis::pipe();
        for r in &rooms {
            pipe.cmd("HKEYS").arg(keys::room_gateways(r));
        }
        let owners: Vec<Vec<String>> = redis.pipe(&pipe).await?;
        for (room, gws) in rooms.iter().zip(owners) {
            for gw in gws.iter().filter(|g| is_dead(g)) {
                removed_conns += remove_gateway_from_room(ctx, room, gw).await?;
            }
            // Members of dead gateways without a count entry (a crash between
            // the two writes) are found by scanning the set itself.
            let members: Vec<String> = redis
                .query(redis::cmd("SMEMBERS").arg(keys::connections(room)))
                .await?;
            let stale: Vec<&String> = members
                .iter()
                .filter(|m| m.split_once('/').is_some_and(|(gw, _)| is_dead(gw)))
                .collect();
            if !stale.is_empty() {
                removed_conns += stale.len();
                redis
                    .query::<()>(redis::cmd("SREM").arg(keys::connections(room)).arg(&stale))
                    .await?;
            }
            let (conns, history): (u64, u64) = redis
                .pipe(
                    redis::pipe()
                        .cmd("SCARD")
                        .arg(keys::connections(room))
                        .cmd("EXISTS")
                        .arg(keys::messages(room)),
                )
                .await?;
            if conns == 0 && history == 0 {
                redis
                    .query::<()>(
                        redis::cmd("SREM")
                            .arg(keys::ROOMS_ACTIVE)
                            .arg(room.as_str()),
                    )
                    .await?;
                removed_rooms += 1;
            }
        }
    }
    let dead: Vec<&String> = beats
        .iter()
        .filter(|(_, &t)| t < cutoff)
        .map(|(g, _)| g)
        .collect();
    if !dead.is_empty() {
        redis
            .query::<()>(redis::cmd("HDEL").arg(keys::GATEWAYS).arg(&dead))
            .await?;
        tracing::info!(gateways = ?dead, "Removed dead gateways");
    }
    if removed_conns > 0 || removed_rooms > 0 {
        tracing::info!(removed_conns, removed_rooms, "Janitor sweep cleaned up");
    }
    Ok(())
}

async fn remove_gateway_from_room(
    ctx: &Context,
    room: &RoomId,
    gateway: &str,
) -> Result<usize, RedisError> {
    let members: Vec<String> = ctx
        .redis
        .query(redis::cmd("SMEMBERS").arg(keys::connections(room)))
        .await?;
    let prefix = format!("{gateway}/");
    let mine: Vec<&String> = members.iter().filter(|m| m.starts_with(&prefix)).collect();
    let mut pipe = redis::pipe();
    pipe.atomic();
    if !mine.is_empty() {
        pipe.cmd("SREM")
            .arg(keys::connections(room))
            .arg(&mine)
            .ignore();
    }
    pipe.cmd("HDEL")
        .arg(keys::room_gateways(room))
        .arg(gateway)
        .ignore();
    ctx.redis.pipe::<()>(&pipe).await?;
    Ok(mine.len())
}
