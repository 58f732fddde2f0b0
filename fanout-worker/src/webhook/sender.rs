//! The sender of one shard's webhook outbox, run beside the shard task
//! while this worker holds the shard's lease.
//!
//! It reads the outbox with its own consumer group (`chat-webhooks`),
//! through the same lease-fenced script as the shard task (`stream`): a
//! worker that lost the lease can never take entries into its pending list.
//! It first claims every pending entry (those of a killed or replaced
//! holder, in id order), then reads new ones, waiting with a plain
//! `XREAD BLOCK` when there are none. Each batch of at most
//! `WEBHOOK_BATCH_MAX` records is POSTed (`deliver`) before the next one is
//! read, so a shard's records reach the receiver in order; after a 2xx, or
//! once the batch is given up, its entries are acked and deleted. Entries of
//! a batch that was not finished (shutdown, lapsed lease, Redis error) stay
//! pending and are sent again by whoever holds the shard next: at least once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_shared::metrics as m;
use chat_shared::redis::Conn;
use chat_shared::redis::RedisError;
use chat_shared::shutdown::sleep_or_cancel;
use tokio_util::sync::CancellationToken;

use super::deliver::{self, Outcome};
use super::{body, outbox, Webhook};
use crate::lease::LeaseClock;
use crate::stream::{self, Fenced, Read, Reader, Scripts, Target, CLAIM_START, MAX_BACKOFF};
use crate::Context;

/// Runs until `cancel` fires or the lease lapses.
pub(crate) async fn run(
    shard: u32,
    ctx: Arc<Context>,
    hook: Arc<Webhook>,
    lease: LeaseClock,
    cancel: CancellationToken,
) {
    let target = Target::webhooks(shard);
    let scripts = Scripts::new();
    let reclaim_every = ctx.config.lease_ttl();
    let mut conn: Option<Reader> = None;
    let mut claim: Option<String> = Some(CLAIM_START.into());
    let mut next_claim = Instant::now() + reclaim_every;
    let mut backoff = Duration::from_millis(50);
    while !cancel.is_cancelled() && lease.is_valid() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match stream::open_group(&ctx, &target, &ctx.worker_id, &scripts, &[]).await {
                Ok(Fenced::Held(r)) => {
                    backoff = Duration::from_millis(50);
                    claim = Some(CLAIM_START.into());
                    conn.insert(r)
                }
                Ok(Fenced::NotHolder) => break,
                Ok(Fenced::Superseded) => continue,
                Err(e) => {
                    metrics::counter!(m::WK_REDIS_ERRORS, "op" => "webhook").increment(1);
                    tracing::warn!(shard, error = %e, "Cannot open webhook outbox connection; retrying");
                    sleep_or_cancel(&cancel, &mut backoff, MAX_BACKOFF).await;
                    continue;
                }
            },
        };
        if claim.is_none() && Instant::now() >= next_claim {
            claim = Some(CLAIM_START.into());
            next_claim = Instant::now() + reclaim_every;
        }
        let step = next_entries(c, &scripts, &target, &ctx, &hook, &mut claim).await;
        let result = match step {
            Ok(Fenced::NotHolder) => break,
            Ok(Fenced::Superseded) => {
                conn = None;
                continue;
            }
            Ok(Fenced::Held(Read::Idle(newest))) => {
                stream::wait_for_entries(
                    &mut c.conn,
                    &target.stream,
                    &newest,
                    ctx.config.read_block(),
                    &cancel,
                )
                .await
            }
            Ok(Fenced::Held(Read::Entries(entries))) if entries.is_empty() => Ok(()),
            Ok(Fenced::Held(Read::Entries(entries))) => {
                let batch = body::build(shard, &entries);
                match deliver::deliver(&hook, &batch, &lease, &cancel).await {
                    Outcome::Sent | Outcome::GaveUp => {
                        done(&mut c.conn, &target.stream, &batch.ids).await
                    }
                    // Left pending for the next holder (or our next claim pass).
                    Outcome::Stopped => break,
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            if !stream::is_nogroup(&e) {
                metrics::counter!(m::WK_REDIS_ERRORS, "op" => "webhook").increment(1);
                tracing::warn!(shard, error = %e, "Webhook outbox command failed; reconnecting");
            }
            // Reopening starts with a claim pass: whatever was read but not
            // acked is sent again, in order.
            conn = None;
            sleep_or_cancel(&cancel, &mut backoff, MAX_BACKOFF).await;
        }
    }
    if cancel.is_cancelled() {
        tracing::debug!(shard, "Webhook sender stopped");
    } else {
        // The shard task sees this sender finished and stops as well.
        tracing::warn!(
            shard,
            lease_valid = lease.is_valid(),
            "Webhook sender stopped (lease lapsed or not ours); stopping the shard"
        );
    }
}

/// The next entries: claimed while a claim pass is under way, else read.
async fn next_entries(
    c: &mut Reader,
    scripts: &Scripts,
    target: &Target,
    ctx: &Context,
    hook: &Webhook,
    claim: &mut Option<String>,
) -> Result<Fenced<Read>, RedisError> {
    let count = hook.args.webhook_batch_max as usize;
    if let Some(cursor) = claim.as_deref() {
        return Ok(
            match stream::claim(
                c,
                scripts,
                target,
                &ctx.worker_id,
                cursor,
                count,
                stream::ClaimMode::All,
            )
            .await?
            {
                Fenced::NotHolder => Fenced::NotHolder,
                Fenced::Superseded => Fenced::Superseded,
                Fenced::Held(claimed) => {
                    *claim = claimed.next;
                    Fenced::Held(Read::Entries(claimed.entries))
                }
            },
        );
    }
    stream::read(c, scripts, target, &ctx.worker_id, count).await
}

/// Acks and deletes a finished batch's entries.
async fn done(c: &mut Conn, outbox: &str, ids: &[String]) -> Result<(), RedisError> {
    let mut pipe = redis::pipe();
    outbox::add_done(&mut pipe, outbox, ids);
    pipe.query_async::<()>(c).await.map_err(RedisError::from)
}
