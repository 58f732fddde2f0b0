//! Judging gateways dead and closing their evictions, for both janitor
//! sweeps (the full one in `janitor`, the index one in
//! `evict`): the mark written before the first removal, and what
//! happens to the gateway's heartbeat and room index after the last.

use std::collections::{BTreeSet, HashMap, HashSet};

use chat_shared::keys;
use chat_shared::redis::RedisError;

use crate::Context;

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
pub(crate) struct Liveness {
    pub(crate) cutoff_ms: i64,
    known: HashMap<String, bool>,
    judge: redis::Script,
}

impl Liveness {
    pub(crate) async fn new(ctx: &Context) -> Result<Self, RedisError> {
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
    pub(crate) async fn is_dead(
        &mut self,
        ctx: &Context,
        gateway: &str,
    ) -> Result<bool, RedisError> {
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

/// Closes every eviction: of the gateways this sweep evicted, of those a
/// cut-off sweep left marked, and of stale ones without entries (see
/// [`FINISH_LUA`]).
pub(crate) async fn finish_evictions(
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
            1 => {
                // Its rooms are clean: the index has served its purpose.
                redis
                    .query::<()>(redis::cmd("DEL").arg(keys::gateway_rooms(gw)))
                    .await?;
                forgotten.push(gw);
            }
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
