//! Processing of one stream shard while this worker holds its lease.
//!
//! The loop first claims every pending entry of the shard's consumer group
//! (entries a dead or replaced worker read but never acked) and processes them
//! in id order, then reads new entries, waiting up to `READ_BLOCK_MS` when
//! there are none. Reads and claims are fenced by the lease in Redis
//! (`stream`), so no entry can reach this worker's pending list once another
//! worker holds the shard. Each batch goes through `batch` (two round trips;
//! acked only once persisted and published), within the time the lease surely
//! holds.
//!
//! With webhooks on, the task runs the shard's webhook `sender` beside it,
//! under the same lease, and stops it before it returns (so before the
//! supervisor releases the lease).
//!
//! Claim passes also run every lease TTL, not only after a (re)connect: an
//! entry that reached another consumer's pending list anyway (a worker of an
//! older version during an upgrade, a tool reading the group) and has been
//! idle for a lease TTL is picked up by the current holder. These periodic
//! passes leave this worker's own pending entries alone: they are entries
//! it holds for a newer worker (`hold`), which only a (re)connection claims
//! and judges again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::RedisError;
use chat_shared::shutdown::sleep_or_cancel;
use redis::streams::StreamId;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, BatchScripts, Origin};
use crate::hold::Hold;
use crate::lease::LeaseClock;
use crate::persist;
use crate::stream::{
    self, ClaimMode, Fenced, Read, Reader, Scripts, Target, CLAIM_START, MAX_BACKOFF,
};
use crate::webhook::outbox::{self, Outbox};
use crate::webhook::sender;
use crate::Context;

/// What one step of the loop got.
enum Step {
    /// Entries to process.
    Entries(Vec<StreamId>, Origin),
    /// Nothing new after this id.
    Idle(String),
    /// The lease is not ours in Redis.
    NotHolder,
    /// A newer connection of ours took the fencing token: reconnect.
    Superseded,
}

/// Runs the shard loop until `cancel` fires or the lease lapses.
pub(crate) async fn run(
    shard: u32,
    ctx: Arc<Context>,
    lease: LeaseClock,
    cancel: CancellationToken,
) {
    let target = Target::shard(shard);
    let consumer = ctx.worker_id.clone();
    let persist_script = persist::script();
    let stream_scripts = Scripts::new();
    let append_script = outbox::append_script();
    let outbox_key = keys::webhook_outbox(shard);
    let scripts = BatchScripts {
        persist: &persist_script,
        stream: &stream_scripts,
        outbox: ctx.webhook.as_ref().map(|hook| Outbox {
            script: &append_script,
            key: &outbox_key,
            cap: hook.args.webhook_queue_max,
        }),
    };
    // The shard's webhook sender lives exactly as long as this task.
    let sender_stop = cancel.child_token();
    let sender = ctx.webhook.clone().map(|hook| {
        tokio::spawn(sender::run(
            shard,
            ctx.clone(),
            hook,
            lease.clone(),
            sender_stop.clone(),
        ))
    });
    let reclaim_every = ctx.config.lease_ttl();
    let mut conn: Option<Reader> = None;
    // `Some(cursor)` while a claim pass is under way, of `claim_mode`.
    let mut claim: Option<String> = Some(CLAIM_START.into());
    let mut claim_mode = ClaimMode::All;
    let mut next_claim = Instant::now() + reclaim_every;
    let mut hold = Hold::new(shard);
    let mut backoff = Duration::from_millis(50);
    tracing::info!(shard, "Shard processing started");
    // The sender stops on its own when it finds the lease lapsed or not
    // ours; the shard then stops too (it may not have noticed: a lapse can
    // be undone by a late renewal), so the supervisor restarts both. A
    // shard running without its sender would queue its rooms' webhooks
    // forever and deliver none (nemesis, cluster seed 1).
    let sender_gone = |s: &Option<tokio::task::JoinHandle<()>>| {
        s.as_ref().is_some_and(tokio::task::JoinHandle::is_finished)
    };
    while !cancel.is_cancelled() && lease.is_valid() && !sender_gone(&sender) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match open(&ctx, &target, &consumer, &scripts).await {
                Ok(Fenced::Held(r)) => {
                    backoff = Duration::from_millis(50);
                    claim = Some(CLAIM_START.into());
                    // The full claim pass meets every held entry again.
                    claim_mode = ClaimMode::All;
                    hold = Hold::new(shard);
                    conn.insert(r)
                }
                Ok(Fenced::NotHolder) => {
                    tracing::warn!(shard, "Lease no longer ours in Redis; stopping the shard");
                    lease.expire();
                    break;
                }
                // Only the fenced calls answer this.
                Ok(Fenced::Superseded) => continue,
                Err(e) => {
                    metrics::counter!(m::WK_REDIS_ERRORS, "op" => "connect").increment(1);
                    tracing::warn!(shard, error = %e, "Cannot open shard connection; retrying");
                    sleep_or_cancel(&cancel, &mut backoff, MAX_BACKOFF).await;
                    continue;
                }
            },
        };
        if claim.is_none() && Instant::now() >= next_claim {
            claim = Some(CLAIM_START.into());
            claim_mode = ClaimMode::Others(reclaim_every);
        }
        let step = next_step(
            c,
            &stream_scripts,
            &target,
            &consumer,
            &ctx,
            &mut claim,
            claim_mode,
        )
        .await;
        if claim.is_none() && matches!(step, Ok(Step::Entries(_, Origin::Claimed))) {
            next_claim = Instant::now() + reclaim_every;
        }
        let result = match step {
            Ok(Step::NotHolder) => {
                tracing::warn!(shard, "Lease no longer ours in Redis; stopping the shard");
                lease.expire();
                break;
            }
            Ok(Step::Superseded) => {
                tracing::warn!(
                    shard,
                    "Shard connection superseded by a late request; reconnecting"
                );
                conn = None;
                continue;
            }
            // Waiting delivers nothing to the group, so a cancel may drop it.
            Ok(Step::Idle(newest)) => {
                stream::wait_for_entries(
                    &mut c.conn,
                    &target.stream,
                    &newest,
                    ctx.config.read_block(),
                    &cancel,
                )
                .await
            }
            Ok(Step::Entries(entries, _)) if entries.is_empty() => Ok(()),
            // The lease may have lapsed meanwhile: never process then. The
            // entries stay pending for the next holder's claim pass.
            Ok(Step::Entries(..)) if !lease.is_valid() => break,
            // A batch must finish while the lease surely holds: abandoned
            // half-way, its entries stay pending and are redone idempotently.
            Ok(Step::Entries(entries, origin)) => match tokio::time::timeout(
                lease.remaining(),
                batch::process(
                    &mut c.conn,
                    &scripts,
                    &target.stream,
                    &ctx,
                    &lease,
                    &mut hold,
                    entries,
                    origin,
                ),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    // The connection may still owe replies: start afresh,
                    // which also re-claims the abandoned (pending) entries.
                    // The loop condition stops us if the lease really lapsed.
                    tracing::warn!(shard, "Lease margin reached mid-batch; batch abandoned");
                    conn = None;
                    continue;
                }
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if !stream::is_nogroup(&e) {
                metrics::counter!(m::WK_REDIS_ERRORS, "op" => "shard").increment(1);
                tracing::warn!(shard, error = %e, "Shard batch failed; will reconnect and retry pending entries");
            } else {
                tracing::info!(
                    shard,
                    "Consumer group missing (Redis restarted or flushed); recreating"
                );
            }
            conn = None;
            sleep_or_cancel(&cancel, &mut backoff, MAX_BACKOFF).await;
        }
    }
    hold.clear_gauge();
    sender_stop.cancel();
    if let Some(sender) = sender {
        let _ = sender.await;
    }
    tracing::info!(
        shard,
        lease_valid = lease.is_valid(),
        "Shard processing stopped"
    );
}

/// Claims the next pending entries while a claim pass is under way (moving
/// `claim` on, to `None` at its end), else reads new ones.
async fn next_step(
    c: &mut Reader,
    scripts: &Scripts,
    target: &Target,
    consumer: &str,
    ctx: &Context,
    claim: &mut Option<String>,
    mode: ClaimMode,
) -> Result<Step, RedisError> {
    let count = ctx.config.batch_size as usize;
    if let Some(cursor) = claim.as_deref() {
        let claimed = match stream::claim(c, scripts, target, consumer, cursor, count, mode).await?
        {
            Fenced::NotHolder => return Ok(Step::NotHolder),
            Fenced::Superseded => return Ok(Step::Superseded),
            Fenced::Held(claimed) => claimed,
        };
        if !claimed.entries.is_empty() {
            tracing::debug!(
                stream = %target.stream,
                entries = claimed.entries.len(),
                "Claimed pending entries"
            );
        }
        *claim = claimed.next;
        return Ok(Step::Entries(claimed.entries, Origin::Claimed));
    }
    Ok(
        match stream::read(c, scripts, target, consumer, count).await? {
            Fenced::NotHolder => Step::NotHolder,
            Fenced::Superseded => Step::Superseded,
            Fenced::Held(Read::Entries(entries)) => Step::Entries(entries, Origin::New),
            Fenced::Held(Read::Idle(newest)) => Step::Idle(newest),
        },
    )
}

/// Opens the shard's connection with the batch scripts loaded (batches then
/// only send `EVALSHA`) and a fresh fencing token.
async fn open(
    ctx: &Context,
    target: &Target,
    consumer: &str,
    scripts: &BatchScripts<'_>,
) -> Result<Fenced<Reader>, RedisError> {
    let mut extra = vec![scripts.persist];
    if let Some(outbox) = &scripts.outbox {
        extra.push(outbox.script);
    }
    stream::open_group(ctx, target, consumer, scripts.stream, &extra).await
}
