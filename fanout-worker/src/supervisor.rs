//! Which shards this worker processes: acquires, renews, balances and releases leases.
//!
//! Every tick (a third of the lease TTL) the supervisor heartbeats in
//! `chat:workers`, renews the leases it holds (a failed renewal stops that
//! shard), computes its fair share `ceil(shards / live workers)`, releases
//! shards above it (after their task has finished its batch) and tries to take
//! free ones below it. A worker that joins therefore gets shards within a tick
//! or two; a dead worker's shards are free once its leases expire.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_shared::envelope::now_us;
use chat_shared::metrics as m;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::lease::{LeaseClock, Leases};
use crate::{shard, webhook, Context};

struct Owned {
    clock: LeaseClock,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Runs until `shutdown`, then stops every shard task and releases its lease.
pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let cfg = &ctx.config;
    let ttl = cfg.lease_ttl();
    let leases = Leases::new(ctx.redis.clone(), ctx.worker_id.clone(), ttl);
    let margin = leases.safety_margin();
    let tick = ttl / 3;
    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    // Shards whose per-shard lag gauge this worker has set (zeroed once it
    // no longer holds them, so a dashboard summing by shard counts each once).
    let mut reported: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let offset = start_offset(&ctx.worker_id, cfg.stream_shards);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        // Tasks that stopped by themselves (lease lapsed) are forgotten.
        owned.retain(|shard, o| {
            let alive = !o.task.is_finished();
            if !alive {
                tracing::warn!(shard, "Shard task ended; lease considered lost");
            }
            alive
        });

        // Renew, every held lease at once: one after the other, N renewals
        // took N round trips, and with a slow Redis (a latency of TTL/3/N
        // is enough) the last lease's clock lapsed before its turn came
        // round again, stopping shards that nobody else wanted (nemesis:
        // leases churned hundreds of times per schedule on a busy machine).
        let sent = Instant::now();
        let renewals = futures_util::future::join_all(
            owned
                .keys()
                .map(|&shard| tokio::time::timeout(margin, leases.renew(shard))),
        )
        .await;
        let mut lost = Vec::new();
        for ((&shard, o), renewal) in owned.iter().zip(renewals) {
            match renewal {
                Ok(Ok(true)) => o.clock.extend(sent, ttl, margin),
                Ok(Ok(false)) => {
                    tracing::warn!(shard, "Lease taken by another worker; stopping shard");
                    o.clock.expire();
                    lost.push(shard);
                }
                Ok(Err(e)) => {
                    metrics::counter!(m::WK_REDIS_ERRORS, "op" => "lease").increment(1);
                    tracing::warn!(shard, error = %e, "Lease renewal failed");
                }
                Err(_) => tracing::warn!(shard, "Lease renewal timed out"),
            }
        }
        for shard in lost {
            if let Some(o) = owned.remove(&shard) {
                o.cancel.cancel();
            }
        }

        // Balance.
        let live = match live_workers(&ctx, ttl).await {
            Ok(n) => n.max(1),
            Err(e) => {
                metrics::counter!(m::WK_REDIS_ERRORS, "op" => "heartbeat").increment(1);
                tracing::warn!(error = %e, "Worker heartbeat failed; keeping current shards");
                metrics::gauge!(m::WK_SHARDS_OWNED).set(owned.len() as f64);
                continue;
            }
        };
        let share = cfg.stream_shards.div_ceil(live) as usize;
        while owned.len() > share {
            let Some((&shard, _)) = owned.iter().next_back() else {
                break;
            };
            if let Some(o) = owned.remove(&shard) {
                stop_and_release(shard, o, &leases).await;
                tracing::info!(shard, share, live, "Released shard to rebalance");
            }
        }
        for i in 0..cfg.stream_shards {
            if owned.len() >= share {
                break;
            }
            let shard = (offset + i) % cfg.stream_shards;
            if owned.contains_key(&shard) {
                continue;
            }
            let sent = Instant::now();
            match leases.acquire(shard).await {
                Ok(true) => {
                    tracing::info!(shard, "Lease acquired");
                    let clock = LeaseClock::new(sent, ttl, margin);
                    let cancel = shutdown.child_token();
                    let task = tokio::spawn(shard::run(
                        shard,
                        ctx.clone(),
                        clock.clone(),
                        cancel.clone(),
                    ));
                    owned.insert(
                        shard,
                        Owned {
                            clock,
                            cancel,
                            task,
                        },
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    metrics::counter!(m::WK_REDIS_ERRORS, "op" => "lease").increment(1);
                    tracing::warn!(shard, error = %e, "Lease acquisition failed");
                    break;
                }
            }
        }
        metrics::gauge!(m::WK_SHARDS_OWNED).set(owned.len() as f64);
        ctx.set_ready(true);
        let shards: Vec<u32> = owned.keys().copied().collect();
        match backlog(&ctx, &shards).await {
            Ok(per_shard) => {
                let lag: u64 = per_shard.iter().map(|b| b.lag).sum();
                let pending: u64 = per_shard.iter().map(|b| b.pending).sum();
                metrics::gauge!(m::WK_STREAM_LAG).set(lag as f64);
                metrics::gauge!(m::WK_STREAM_PENDING).set(pending as f64);
                let now: std::collections::BTreeSet<u32> = shards.iter().copied().collect();
                for gone in reported.difference(&now) {
                    metrics::gauge!(m::WK_SHARD_LAG, "shard" => gone.to_string()).set(0.0);
                }
                reported = now;
                for b in &per_shard {
                    metrics::gauge!(m::WK_SHARD_LAG, "shard" => b.shard.to_string())
                        .set(b.lag as f64);
                }
            }
            Err(e) => tracing::debug!(error = %e, "Cannot read stream backlog"),
        }
        if ctx.webhook.is_some() {
            match webhook::outbox::depth(&ctx.redis, &shards).await {
                Ok(n) => metrics::gauge!(m::WK_WEBHOOK_QUEUE).set(n as f64),
                Err(e) => tracing::debug!(error = %e, "Cannot read webhook queue depth"),
            }
        }
    }

    // Drain: let each shard finish its batch, then hand its lease over.
    ctx.set_ready(false);
    tracing::info!(shards = owned.len(), "Draining: releasing shard leases");
    for (shard, o) in std::mem::take(&mut owned) {
        stop_and_release(shard, o, &leases).await;
    }
    let _ = ctx
        .redis
        .query::<i64>(
            redis::cmd("HDEL")
                .arg(chat_shared::keys::WORKERS)
                .arg(&ctx.worker_id),
        )
        .await;
    metrics::gauge!(m::WK_SHARDS_OWNED).set(0.0);
}

async fn stop_and_release(shard: u32, o: Owned, leases: &Leases) {
    o.cancel.cancel();
    // The task stops after its in-flight batch; the lease is still ours until then.
    if tokio::time::timeout(leases.safety_margin(), o.task)
        .await
        .is_err()
    {
        tracing::warn!(
            shard,
            "Shard task did not stop in time; leaving its lease to expire"
        );
        return;
    }
    if let Err(e) = leases.release(shard).await {
        tracing::warn!(shard, error = %e, "Lease release failed; it will expire");
    }
}

/// Heartbeats and counts workers seen within one lease TTL; forgets older ones.
async fn live_workers(ctx: &Context, ttl: Duration) -> Result<u32, chat_shared::redis::RedisError> {
    let now_ms = now_us() / 1000;
    let (all,): (Vec<(String, i64)>,) = ctx
        .redis
        .pipe(
            redis::pipe()
                .cmd("HSET")
                .arg(chat_shared::keys::WORKERS)
                .arg(&ctx.worker_id)
                .arg(now_ms)
                .ignore()
                .cmd("HGETALL")
                .arg(chat_shared::keys::WORKERS),
        )
        .await?;
    let cutoff = now_ms - ttl.as_millis() as i64;
    let mut live = 0;
    for (id, seen) in all {
        if seen >= cutoff {
            live += 1;
        } else if seen < cutoff - 10 * ttl.as_millis() as i64 {
            let _ = ctx
                .redis
                .query::<i64>(redis::cmd("HDEL").arg(chat_shared::keys::WORKERS).arg(&id))
                .await;
        }
    }
    Ok(live)
}

/// One shard's backlog in the consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backlog {
    shard: u32,
    /// Entries not yet read by the group.
    lag: u64,
    /// Entries read but not yet acked.
    pending: u64,
}

/// Each of `shards`' backlog in the consumer group: `lag` (not yet read) and
/// `pending` (read, not acked), from `XINFO GROUPS`, in one pipeline.
async fn backlog(
    ctx: &Context,
    shards: &[u32],
) -> Result<Vec<Backlog>, chat_shared::redis::RedisError> {
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for &s in shards {
        pipe.cmd("XINFO")
            .arg("GROUPS")
            .arg(chat_shared::keys::stream(s));
    }
    let replies: Vec<Vec<HashMap<String, redis::Value>>> = ctx.redis.pipe(&pipe).await?;
    let mut out = Vec::with_capacity(shards.len());
    for (&shard, groups) in shards.iter().zip(&replies) {
        let mut b = Backlog {
            shard,
            lag: 0,
            pending: 0,
        };
        for group in groups {
            let is_ours = matches!(group.get("name"), Some(redis::Value::BulkString(n)) if n == chat_shared::keys::CONSUMER_GROUP.as_bytes());
            if !is_ours {
                continue;
            }
            let num = |k: &str| match group.get(k) {
                Some(redis::Value::Int(n)) => (*n).max(0) as u64,
                _ => 0,
            };
            b.lag += num("lag");
            b.pending += num("pending");
        }
        out.push(b);
    }
    Ok(out)
}

/// Where this worker starts looking for free shards, so workers that start
/// together do not all race for shard 0.
fn start_offset(worker_id: &str, shards: u32) -> u32 {
    let h = worker_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    h % shards.max(1)
}
