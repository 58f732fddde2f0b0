//! The janitor's frequent sweep: evicting the gateways that died, through
//! their room indexes (`chat:gateway-rooms:{<gateway>}`, kept by each
//! gateway), so its cost is the dead gateways' rooms, not every active room.
//!
//! Candidates are the gateways whose heartbeat is older than the cutoff and
//! those a cut-off sweep left marked as being evicted. Each is judged (and
//! marked) like in the full sweep, its indexed rooms are cleaned room by room
//! ([`crate::room_clean::clean_room`], which also removes any other dead
//! gateway's entries it meets), and the evictions are closed as in the full
//! sweep (which deletes the index with the heartbeat). Rooms an index missed
//! are found by the full sweep (`JANITOR_FULL_SWEEP_MS`).

use std::collections::{BTreeSet, HashMap, HashSet};

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::redis::RedisError;

use crate::eviction::{finish_evictions, Liveness};
use crate::room_clean::{clean_room, Tally};
use crate::Context;

/// Rooms read from an index per page.
const PAGE: usize = 200;

/// Evicts the gateways that died since the last sweep.
pub(crate) async fn sweep(ctx: &Context) -> Result<(), RedisError> {
    let redis = &ctx.redis;
    let started = std::time::Instant::now();
    let mut liveness = Liveness::new(ctx).await?;
    let beats: HashMap<String, i64> = redis
        .query(redis::cmd("HGETALL").arg(keys::GATEWAYS))
        .await?;
    let marks: Vec<String> = redis
        .query(redis::cmd("HKEYS").arg(keys::GATEWAY_EVICTIONS))
        .await?;
    let candidates: BTreeSet<&str> = beats
        .iter()
        // A negative beat is an eviction already done (the gateway comes back).
        .filter(|(_, &t)| (0..liveness.cutoff_ms).contains(&t))
        .map(|(gw, _)| gw.as_str())
        .chain(marks.iter().map(String::as_str))
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let mut evicted = HashSet::new();
    let mut tally = Tally::default();
    let mut visited = 0usize;
    for gw in candidates {
        if !liveness.is_dead(ctx, gw).await? {
            continue;
        }
        evicted.insert(gw.to_owned());
        let index = keys::gateway_rooms(gw);
        let mut cursor = 0;
        loop {
            let (next, page) = redis.sscan_page(&index, cursor, PAGE).await?;
            let rooms: Vec<RoomId> = page.iter().filter_map(|r| RoomId::parse(r).ok()).collect();
            if !rooms.is_empty() {
                let mut pipe = redis::pipe();
                for r in &rooms {
                    pipe.cmd("HKEYS").arg(keys::room_gateways(r));
                }
                let owners: Vec<Vec<String>> = redis.pipe(&pipe).await?;
                for (room, gws) in rooms.iter().zip(owners) {
                    clean_room(ctx, &mut liveness, room, &gws, &mut evicted, &mut tally).await?;
                    visited += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    finish_evictions(ctx, &liveness, &evicted).await?;
    if evicted.is_empty() {
        return Ok(());
    }
    tracing::info!(
        gateways = ?evicted,
        rooms_visited = visited,
        removed_conns = tally.conns,
        removed_rooms = tally.rooms,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Janitor evicted dead gateways through their room indexes"
    );
    Ok(())
}
