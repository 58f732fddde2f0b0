//! Cleanup of rooms and connections, run by one worker at a time.
//!
//! Holding the `chat:lease:{janitor}` lease, a worker every
//! `JANITOR_INTERVAL_MS` evicts the gateways that died since (through their
//! room index, [`crate::evict`]: the cost of what changed), and every
//! `JANITOR_FULL_SWEEP_MS` (and first in a new process) runs the full
//! sweep below over every active room, the safety net for whatever an index
//! missed:
//! - treats gateways whose heartbeat in `chat:gateways` is older than
//!   `GATEWAY_TIMEOUT_MS` (or that have none) as dead, and removes their members
//!   from `connections:<room>` and their counts from the room's gateway hash, so
//!   workers stop publishing to them (a wrongly judged live gateway notices on its
//!   next heartbeat and re-registers); their presence records go with them, and
//!   users left with no connection get a `leave` (`presence_sweep`);
//! - marks such a gateway in `{chat:gateways}:evicting` before removing the
//!   first of its entries, and clears the mark only after the last one. A
//!   sweep cut off in between (the worker SIGKILLed, a Redis error) leaves
//!   the mark behind, and while it stays the gateway re-registers all its
//!   connections on every heartbeat: without it, a frozen gateway that
//!   resumed before any janitor finished the sweep found its heartbeat record
//!   fresh, never re-registered, and its sockets in the rooms already swept
//!   heard nothing while `/readyz` stayed green (issue 23 path 4). The next
//!   sweep, by any worker, finishes the marks it finds;
//! - removes from `rooms:active` rooms with no connection and no history;
//! - deletes stream consumers of past workers that have nothing pending;
//! - removes message-index entries of messages never stored (`index_sweep`).
//!
//! History itself expires by TTL (`HISTORY_TTL`, refreshed per message) and is
//! trimmed on every write, so there is nothing else to delete.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::eviction::{finish_evictions, Liveness};
use crate::index_sweep;
use crate::lease::Leases;
use crate::room_clean::{clean_room, Tally};
use crate::Context;

/// Runs sweeps while holding the janitor lease, until `shutdown`.
pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let every = Duration::from_millis(ctx.config.janitor_interval_ms);
    let leases = Leases::new(ctx.redis.clone(), ctx.worker_id.clone(), every * 3);
    let full_every = Duration::from_millis(ctx.config.janitor_full_sweep_ms());
    let mut last_full = None;
    let mut holding = false;
    let mut tick = tokio::time::interval(every);
    let mut index_sweep = index_sweep::Schedule::new(ctx.config.index_pending_max_age_ms);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let held = if holding {
            leases.renew_key(keys::JANITOR_LEASE).await
        } else {
            leases.acquire_key(keys::JANITOR_LEASE).await
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
        let full = last_full.is_none_or(|at: tokio::time::Instant| at.elapsed() >= full_every);
        let swept = if full {
            last_full = Some(tokio::time::Instant::now());
            sweep(&ctx).await
        } else {
            crate::evict::sweep(&ctx).await
        };
        if let Err(e) = swept {
            metrics::counter!(m::WK_REDIS_ERRORS, "op" => "janitor").increment(1);
            tracing::warn!(error = %e, "Janitor sweep failed");
        }
        index_sweep.run_if_due(&ctx).await;
    }
    if holding {
        let _ = leases.release_key(keys::JANITOR_LEASE).await;
    }
}

async fn sweep(ctx: &Context) -> Result<(), RedisError> {
    let redis = &ctx.redis;
    let started = std::time::Instant::now();
    let mut liveness = Liveness::new(ctx).await?;
    let mut cursor = 0;
    let mut tally = Tally::default();
    // Gateways whose entries this sweep removed (or tried to).
    let mut evicted: HashSet<String> = HashSet::new();
    // Walk rooms:active page by page: no single command blocks Redis, and a
    // room seen twice (SSCAN may repeat) is only checked twice.
    loop {
        let (next, page) = redis.sscan_page(keys::ROOMS_ACTIVE, cursor, 200).await?;
        let rooms: Vec<RoomId> = page.iter().filter_map(|r| RoomId::parse(r).ok()).collect();
        let mut pipe = redis::pipe();
        for r in &rooms {
            pipe.cmd("HKEYS").arg(keys::room_gateways(r));
        }
        // An empty page (empty set, or SSCAN returning nothing this turn)
        // must not become an empty pipeline, which redis-rs rejects.
        let owners: Vec<Vec<String>> = if rooms.is_empty() {
            Vec::new()
        } else {
            redis.pipe(&pipe).await?
        };
        for (room, gws) in rooms.iter().zip(owners) {
            clean_room(ctx, &mut liveness, room, &gws, &mut evicted, &mut tally).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    finish_evictions(ctx, &liveness, &evicted).await?;
    let pruned = prune_consumers(ctx).await?;
    if pruned > 0 {
        tracing::info!(pruned, "Removed idle stream consumers of past workers");
    }
    if tally.conns > 0 || tally.rooms > 0 {
        tracing::info!(
            removed_conns = tally.conns,
            removed_rooms = tally.rooms,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Janitor sweep cleaned up"
        );
    }
    Ok(())
}

/// Deletes a consumer only if it has nothing pending, atomically.
/// KEYS: stream. ARGV: group, consumer. Returns -1 when it kept the consumer.
static DELETE_IF_IDLE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"#,
    )
});

/// Every worker process joins each shard's consumer groups (the stream's
/// `chat-fanout` and the webhook outbox's `chat-webhooks`) under its own id,
/// so ids of past workers pile up. A consumer with nothing pending can go
/// (deleting one with pending entries would drop them from the pending list,
/// so those are left for `XAUTOCLAIM`).
async fn prune_consumers(ctx: &Context) -> Result<usize, RedisError> {
    let idle_limit_ms = 10 * ctx.config.lease_ttl_ms as i64;
    let mut pruned = 0;
    // Workers with a heartbeat may take a shard back at any moment: keep theirs.
    let live_workers: std::collections::HashSet<String> = ctx
        .redis
        .query(redis::cmd("HKEYS").arg(keys::WORKERS))
        .await?;
    let groups = (0..ctx.config.stream_shards).flat_map(|shard| {
        [
            (keys::stream(shard), keys::CONSUMER_GROUP),
            (keys::webhook_outbox(shard), keys::WEBHOOK_GROUP),
        ]
    });
    for (stream, group) in groups {
        let consumers: Result<Vec<HashMap<String, redis::Value>>, _> = ctx
            .redis
            .query(redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(group))
            .await;
        // No stream or group yet: nothing to prune.
        let Ok(consumers) = consumers else { continue };
        for c in consumers {
            let int = |k: &str| match c.get(k) {
                Some(redis::Value::Int(n)) => *n,
                _ => -1,
            };
            let Some(redis::Value::BulkString(name)) = c.get("name") else {
                continue;
            };
            let name = String::from_utf8_lossy(name);
            if name == ctx.worker_id || int("pending") != 0 || int("idle") < idle_limit_ms {
                continue;
            }
            if live_workers.contains(name.as_ref()) {
                continue;
            }
            // Check and delete in one step: a consumer that just claimed
            // entries must never be deleted with them still pending.
            let mut inv = DELETE_IF_IDLE.key(&stream);
            inv.arg(group).arg(name.as_ref());
            if ctx.redis.script::<i64>(&inv).await? < 0 {
                continue;
            }
            pruned += 1;
        }
    }
    Ok(pruned)
}
