//! Processing of one stream shard while this worker holds its lease.
//!
//! The loop first claims every pending entry of the shard's consumer group
//! (entries a dead or replaced worker read but never acked) and processes them
//! in id order, then reads new entries with `XREADGROUP … BLOCK`. Each batch
//! goes through `batch` (two round trips; acked only once persisted and
//! published), within the time the lease surely holds.

use std::sync::Arc;
use std::time::Duration;

use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::RedisError;
use chat_shared::shutdown::sleep_or_cancel;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::lease::LeaseClock;
use crate::persist;
use crate::{batch, Context};

/// Longest pause between attempts after a Redis failure.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs the shard loop until `cancel` fires or the lease lapses.
pub(crate) async fn run(
    shard: u32,
    ctx: Arc<Context>,
    lease: LeaseClock,
    cancel: CancellationToken,
) {
    let stream = keys::stream(shard);
    let consumer = ctx.worker_id.clone();
    let script = persist::script();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backlog_done = false;
    let mut backoff = Duration::from_millis(50);
    tracing::info!(shard, "Shard processing started");
    while !cancel.is_cancelled() && lease.is_valid() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match open(&ctx, &stream, &script).await {
                Ok(c) => {
                    backoff = Duration::from_millis(50);
                    backlog_done = false;
                    conn.insert(c)
                }
                Err(e) => {
                    metrics::counter!(m::WK_REDIS_ERRORS, "op" => "connect").increment(1);
                    tracing::warn!(shard, error = %e, "Cannot open shard connection; retrying");
                    sleep_or_cancel(&cancel, &mut backoff, MAX_BACKOFF).await;
                    continue;
                }
            },
        };
        let read = if backlog_done {
            read_new(c, &stream, &consumer, &ctx, &cancel).await
        } else {
            claim_pending(c, &stream, &consumer, &ctx)
                .await
                .map(|(entries, done)| {
                    backlog_done = done;
                    entries
                })
        };
        let result = match read {
            Ok(entries) if entries.is_empty() => Ok(()),
            // The lease may have lapsed during a long read: never process then.
            Ok(_) if !lease.is_valid() => break,
            // A batch must finish while the lease surely holds: abandoned
            // half-way, its entries stay pending and are redone idempotently.
            Ok(entries) => match tokio::time::timeout(
                lease.remaining(),
                batch::process(c, &script, &stream, &ctx, &lease, entries),
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
            let nogroup = matches!(&e, RedisError::Command(re) if re.code() == Some("NOGROUP"));
            if !nogroup {
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
    tracing::info!(
        shard,
        lease_valid = lease.is_valid(),
        "Shard processing stopped"
    );
}

/// Opens the shard's connection, makes sure the consumer group exists and
/// loads the persistence script. Every failure reopens the connection, so a
/// Redis that restarted (or flushed its scripts) gets the script again; batches
/// then only send `EVALSHA`.
async fn open(
    ctx: &Context,
    stream: &str,
    script: &redis::Script,
) -> Result<MultiplexedConnection, RedisError> {
    let mut c = ctx.redis.dedicated(ctx.config.read_block()).await?;
    script.load_async(&mut c).await?;
    let created: Result<(), redis::RedisError> = c
        .xgroup_create_mkstream(stream, keys::CONSUMER_GROUP, "0")
        .await;
    match created {
        Ok(()) => {}
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        Err(e) => return Err(e.into()),
    }
    Ok(c)
}

/// Claims up to a batch of pending entries from any consumer. Returns the
/// entries and whether the pending list is exhausted.
async fn claim_pending(
    c: &mut MultiplexedConnection,
    stream: &str,
    consumer: &str,
    ctx: &Context,
) -> Result<(Vec<StreamId>, bool), RedisError> {
    // Entries in the pending list are claimed from the start each time: what
    // we processed was acked and left the list, so "0-0" always yields the
    // oldest unprocessed ones, in id order.
    let opts = StreamAutoClaimOptions::default().count(ctx.config.batch_size as usize);
    let reply: StreamAutoClaimReply = c
        .xautoclaim_options(stream, keys::CONSUMER_GROUP, consumer, 0, "0-0", opts)
        .await?;
    let done = reply.claimed.is_empty();
    if !reply.claimed.is_empty() {
        tracing::info!(
            stream,
            entries = reply.claimed.len(),
            "Claimed pending entries"
        );
    }
    Ok((reply.claimed, done))
}

/// Reads up to a batch of new entries, blocking up to `READ_BLOCK_MS`;
/// returns nothing when `cancel` fires meanwhile.
async fn read_new(
    c: &mut MultiplexedConnection,
    stream: &str,
    consumer: &str,
    ctx: &Context,
    cancel: &CancellationToken,
) -> Result<Vec<StreamId>, RedisError> {
    let opts = StreamReadOptions::default()
        .group(keys::CONSUMER_GROUP, consumer)
        .count(ctx.config.batch_size as usize)
        .block(ctx.config.read_block().as_millis() as usize);
    let keys = [stream];
    let read = c.xread_options::<_, _, Option<StreamReadReply>>(&keys, &[">"], &opts);
    let reply = tokio::select! {
        r = read => r?,
        // Dropping the read on shutdown is safe: anything it returned would
        // stay pending and be claimed by the next holder.
        _ = cancel.cancelled() => return Ok(Vec::new()),
    };
    Ok(reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default())
}
