//! The janitor's work on one room: removing the entries of dead gateways
//! (counted ones by the gateway hash, uncounted ones found in the set
//! itself), announcing the users left with no connection, and retiring the
//! room from `rooms:active` when nothing uses it. Both sweeps (the full one
//! in `janitor` and the index one in `evict`) call it.

use std::collections::HashSet;

use chat_shared::connections::{remove_gateway_from_room, remove_members, CountMode};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};

use crate::eviction::Liveness;
use crate::presence_sweep;
use crate::Context;

/// What sweeps removed, for their log line.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) conns: usize,
    pub(crate) rooms: usize,
}

/// Removes the entries of dead gateways from `room` (whose gateway hash
/// holds `gws`), announces the users left with no connection, and retires
/// the room when nothing uses it. Gateways found dead go into `evicted`.
pub(crate) async fn clean_room(
    ctx: &Context,
    liveness: &mut Liveness,
    room: &RoomId,
    gws: &[String],
    evicted: &mut HashSet<String>,
    tally: &mut Tally,
) -> Result<(), RedisError> {
    let redis = &ctx.redis;
    // Users whose last connection went: announced once per room.
    let mut left = Vec::new();
    for gw in gws {
        if liveness.is_dead(ctx, gw).await? {
            evicted.insert(gw.clone());
            let removed = remove_gateway_from_room(redis, room, gw).await?;
            tally.conns += removed.members;
            left.extend(removed.left);
        }
    }
    // Members of dead gateways without a count entry (a crash between
    // the two writes) are found by scanning the set itself.
    let members = redis.sscan_all(&keys::connections(room)).await?;
    let mut stale = Vec::new();
    for m in &members {
        if let Some((gw, _)) = m.split_once('/') {
            if liveness.is_dead(ctx, gw).await? {
                evicted.insert(gw.to_owned());
                stale.push(m.as_str());
            }
        }
    }
    if !stale.is_empty() {
        let removed = remove_members(redis, room, CountMode::Stale, "", &stale).await?;
        tally.conns += removed.members;
        left.extend(removed.left);
    }
    left.sort_unstable();
    left.dedup();
    presence_sweep::announce_leaves(ctx, room, &left).await;
    if retire_if_unused(redis, room).await? {
        tally.rooms += 1;
    }
    Ok(())
}

/// Removes `room` from `rooms:active` when it has neither connections nor
/// history. Check, remove, check again: a join (or a persisted message)
/// writes its room key before adding the room to `rooms:active`, so one that
/// lands between the first check and the removal is seen by the second check
/// and the room is put back. (The keys live in different slots, so one
/// script cannot do this in a cluster.) Returns whether the room stays out.
async fn retire_if_unused(redis: &RedisHandle, room: &RoomId) -> Result<bool, RedisError> {
    let in_use = || async {
        let (conns, history): (u64, u64) = redis
            .pipe(
                redis::pipe()
                    .cmd("SCARD")
                    .arg(keys::connections(room))
                    .cmd("EXISTS")
                    .arg(keys::messages(room)),
            )
            .await?;
        Ok::<bool, RedisError>(conns > 0 || history > 0)
    };
    if in_use().await? {
        return Ok(false);
    }
    redis
        .query::<()>(
            redis::cmd("SREM")
                .arg(keys::ROOMS_ACTIVE)
                .arg(room.as_str()),
        )
        .await?;
    if in_use().await? {
        redis
            .query::<()>(
                redis::cmd("SADD")
                    .arg(keys::ROOMS_ACTIVE)
                    .arg(room.as_str()),
            )
            .await?;
        return Ok(false);
    }
    Ok(true)
}
