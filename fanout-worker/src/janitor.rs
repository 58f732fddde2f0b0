//! Cleanup of rooms and connections, run by one worker at a time.
//!
//! Holding the `chat:lease:{janitor}` lease, a worker periodically:
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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chat_shared::connections::{remove_gateway_from_room, remove_members, CountMode};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::{RedisError, RedisHandle};
use tokio_util::sync::CancellationToken;

use crate::index_sweep;
use crate::lease::Leases;
use crate::presence_sweep;
use crate::Context;

/// Runs sweeps while holding the janitor lease, until `shutdown`.
pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let every = Duration::from_millis(ctx.config.janitor_interval_ms);
    let leases = Leases::new(ctx.redis.clone(), ctx.worker_id.clone(), every * 3);
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
        if let Err(e) = sweep(&ctx).await {
            metrics::counter!(m::WK_REDIS_ERRORS, "op" => "janitor").increment(1);
            tracing::warn!(error = %e, "Janitor sweep failed");
        }
        index_sweep.run_if_due(&ctx).await;
    }
    if holding {
        let _ = leases.release_key(keys::JANITOR_LEASE).await;
    }
}

/// Judges one gateway and, when it is dead, marks it as being evicted before
/// any of its entries goes. KEYS: the gateway registry, the evictions hash
/// (same slot). ARGV: gateway, cutoff, this worker's id.
///
/// The mark is what makes a sweep cut off half-way (a SIGKILLed worker, a
/// Redis error) harmless: while it stays, every heartbeat of the gateway
/// re-registers all its connections, so a gateway that resumes after some of
/// its rooms were swept cannot go on with its record looking fresh and those
/// rooms silent. Judging and marking in one script also means a heartbeat
/// cannot land between the two.
///
/// Returns 1 when the gateway is dead (and now marked), 0 when it is alive.
const JUDGE_LUA: &str = r#"
local t = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if t ~= nil and t >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"#;

/// Ends the janitor's dealings with a gateway it judged dead (this sweep or
/// a sweep that was cut off). KEYS: the gateway registry, the evictions
/// hash. ARGV: gateway, cutoff, whether this sweep removed its entries.
/// - Its eviction mark goes.
/// - Still stale: its heartbeat is deleted (when it comes back, its first
///   heartbeat finds none and it re-registers).
/// - Beating again (it was only paused) and entries were removed, by this
///   sweep or by a cut-off one (the mark was there): the heartbeat is marked
///   evicted (-1), so its next heartbeat re-registers once more, after the
///   last removal. It may have re-registered while the removals went on
///   (the mark told it to), and some of those removals came after that.
///
/// Returns 1 when deleted, 2 when marked evicted, 0 otherwise.
const FINISH_LUA: &str = r#"
local marked = redis.call('HDEL', KEYS[2], ARGV[1])
local t = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if t == nil then return 0 end
if t < tonumber(ARGV[2]) then return redis.call('HDEL', KEYS[1], ARGV[1]) end
if (ARGV[3] == '1' or marked == 1) and t >= 0 then
  redis.call('HSET', KEYS[1], ARGV[1], -1)
  return 2
end
return 0
"#;

/// Which gateways are dead, judged on Redis's clock (heartbeats are stamped
/// with Redis `TIME` too) once per sweep and gateway, and marked as being
/// evicted at that moment (see [`JUDGE_LUA`]), so neither clock skew nor a
/// heartbeat during the sweep leaves a live gateway without its entries.
struct Liveness {
    cutoff_ms: i64,
    known: HashMap<String, bool>,
    judge: redis::Script,
}

impl Liveness {
    async fn new(ctx: &Context) -> Result<Self, RedisError> {
        let (secs, micros): (i64, i64) = ctx.redis.query(&redis::cmd("TIME")).await?;
        Ok(Self {
            cutoff_ms: secs * 1000 + micros / 1000 - ctx.config.gateway_timeout_ms as i64,
            known: HashMap::new(),
            judge: redis::Script::new(JUDGE_LUA),
        })
    }

    /// Whether `gateway` is dead; the first time it is found dead in this
    /// sweep, it is marked as being evicted before the caller removes
    /// anything of it.
    async fn is_dead(&mut self, ctx: &Context, gateway: &str) -> Result<bool, RedisError> {
        if let Some(&dead) = self.known.get(gateway) {
            return Ok(dead);
        }
        let mut inv = self.judge.key(keys::GATEWAYS);
        inv.key(keys::GATEWAY_EVICTIONS)
            .arg(gateway)
            .arg(self.cutoff_ms)
            .arg(&ctx.worker_id);
        let dead = ctx.redis.script::<i64>(&inv).await? == 1;
        self.known.insert(gateway.to_owned(), dead);
        Ok(dead)
    }
}

async fn sweep(ctx: &Context) -> Result<(), RedisError> {
    let redis = &ctx.redis;
    let mut liveness = Liveness::new(ctx).await?;
    let mut cursor = 0;
    let mut removed_conns = 0usize;
    let mut removed_rooms = 0usize;
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
            // Users whose last connection went: announced once per room.
            let mut left = Vec::new();
            for gw in &gws {
                if liveness.is_dead(ctx, gw).await? {
                    evicted.insert(gw.clone());
                    let removed = remove_gateway_from_room(&ctx.redis, room, gw).await?;
                    removed_conns += removed.members;
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
                removed_conns += removed.members;
                left.extend(removed.left);
            }
            left.sort_unstable();
            left.dedup();
            presence_sweep::announce_leaves(ctx, room, &left).await;
            if retire_if_unused(redis, room).await? {
                removed_rooms += 1;
            }
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
    if removed_conns > 0 || removed_rooms > 0 {
        tracing::info!(removed_conns, removed_rooms, "Janitor sweep cleaned up");
    }
    Ok(())
}

/// Closes every eviction: of the gateways this sweep evicted, of those a
/// cut-off sweep left marked, and of stale ones without entries (see
/// [`FINISH_LUA`]).
async fn finish_evictions(
    ctx: &Context,
    liveness: &Liveness,
    evicted: &HashSet<String>,
) -> Result<(), RedisError> {
    let redis = &ctx.redis;
    let beats: HashMap<String, i64> = redis
        .query(redis::cmd("HGETALL").arg(keys::GATEWAYS))
        .await?;
    let marks: Vec<String> = redis
        .query(redis::cmd("HKEYS").arg(keys::GATEWAY_EVICTIONS))
        .await?;
    let stale = beats
        .iter()
        .filter(|(_, &t)| t < liveness.cutoff_ms)
        .map(|(gw, _)| gw.as_str());
    let candidates: BTreeSet<&str> = stale
        .chain(evicted.iter().map(String::as_str))
        .chain(marks.iter().map(String::as_str))
        .collect();
    let script = redis::Script::new(FINISH_LUA);
    let mut forgotten = Vec::new();
    let mut marked = Vec::new();
    for gw in candidates {
        let mut inv = script.key(keys::GATEWAYS);
        inv.key(keys::GATEWAY_EVICTIONS)
            .arg(gw)
            .arg(liveness.cutoff_ms)
            .arg(if evicted.contains(gw) { "1" } else { "0" });
        match redis.script::<i64>(&inv).await? {
            1 => forgotten.push(gw),
            2 => marked.push(gw),
            _ => {}
        }
    }
    if !forgotten.is_empty() {
        tracing::info!(gateways = ?forgotten, "Removed dead gateways");
    }
    if !marked.is_empty() {
        tracing::warn!(
            gateways = ?marked,
            "Gateways judged dead beat again during (or after a cut-off) sweep; marked for re-registration"
        );
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
