//! Processing of one stream shard while this worker holds its lease.
//!
//! The loop first claims every pending entry of the shard's consumer group
//! (entries a dead or replaced worker read but never acked) and processes them
//! in id order, then reads new entries with `XREADGROUP … BLOCK`. Each batch
//! costs two round trips: persist all (Lua, idempotent) and look up the owning
//! gateways of the batch's rooms, then publish + `XACK` + `XTRIM MINID`. An entry
//! is acked only after it is persisted and published, so a crash at any point
//! leaves it pending for the next holder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_shared::envelope::{now_us, Delivery, StreamEntry, STREAM_FIELD};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::protocol::record_seq;
use chat_shared::redis::RedisError;
use chat_shared::shutdown::sleep_or_cancel;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use crate::lease::LeaseClock;
use crate::persist::{self, Persisted};
use crate::publish::{self, Routing};
use crate::Context;

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
                process(c, &script, &stream, &ctx, &lease, entries),
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

/// One decoded entry of a batch.
struct Item {
    entry: StreamEntry,
    room: RoomId,
}

async fn process(
    c: &mut MultiplexedConnection,
    script: &redis::Script,
    stream: &str,
    ctx: &Context,
    lease: &LeaseClock,
    entries: Vec<StreamId>,
) -> Result<(), RedisError> {
    metrics::histogram!(m::WK_BATCH_SIZE).record(entries.len() as f64);
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let mut items: Vec<(String, Item)> = Vec::with_capacity(entries.len());
    for e in entries {
        match decode(&e) {
            Some(item) => items.push((e.id, item)),
            None => {
                metrics::counter!(m::WK_UNDECODABLE).increment(1);
                tracing::warn!(stream, entry = %e.id, "Undecodable stream entry; acking and skipping it");
            }
        }
    }

    // 1. Persist every message (idempotent), mark rooms active.
    let epoch = new_epoch();
    let mut pipe = redis::pipe();
    let mut rooms: Vec<RoomId> = Vec::new();
    for (id, item) in &items {
        persist::add_to_pipeline(
            &mut pipe,
            script,
            &item.room,
            id,
            &item.entry.record_prefix(),
            ctx.config.history_limit,
            ctx.config.history_ttl,
            &epoch,
            &item.entry.id,
            2 * ctx.config.batch_size,
        );
        if !rooms.contains(&item.room) {
            rooms.push(item.room.clone());
        }
    }
    for room in &rooms {
        pipe.sadd(keys::ROOMS_ACTIVE, room.as_str()).ignore();
    }
    // 2. In the same round trip, after the writes: which gateways own
    //    connections in these rooms. Redis runs a pipeline in order, so a
    //    gateway that registers after this lookup finds the message in history.
    publish::add_gateway_lookups(&mut pipe, &rooms);
    let (persisted, gateways) = if items.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let mut replies: Vec<redis::Value> = pipe.query_async(c).await?;
        let lookups = replies.split_off(items.len());
        let persisted = replies
            .into_iter()
            .map(<Persisted as redis::FromRedisValue>::from_redis_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RedisError::Command(e.into()))?;
        let gateways = lookups
            .into_iter()
            .map(<Vec<String> as redis::FromRedisValue>::from_redis_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RedisError::Command(e.into()))?;
        (persisted, gateways)
    };

    // 3. Route, publish, ack, trim.
    let mut routing = Routing::default();
    let now = now_us();
    // Metric handles resolved once per batch, not per message.
    let publish_latency = metrics::histogram!(m::WK_PUBLISH_LATENCY_SECONDS);
    let persisted_total = metrics::counter!(m::WK_PERSISTED);
    let duplicate_total = metrics::counter!(m::WK_DUPLICATES);
    for ((_, item), result) in items.iter().zip(persisted) {
        let (seq, record, epoch) = match result {
            Persisted::New { seq, record, epoch } => {
                persisted_total.increment(1);
                (seq, record, epoch)
            }
            Persisted::Duplicate {
                record: Some(record),
                epoch,
            } => {
                duplicate_total.increment(1);
                match record_seq(&record) {
                    Some(seq) => (seq, record, epoch),
                    None => continue,
                }
            }
            Persisted::Duplicate { record: None, .. } => {
                duplicate_total.increment(1);
                continue;
            }
        };
        let idx = rooms.iter().position(|r| r == &item.room).unwrap_or(0);
        let delivery = Delivery {
            room: item.entry.room.clone(),
            seq,
            epoch,
            record,
            stamped_us: item.entry.stamped_us,
        };
        publish_latency.record((now - item.entry.stamped_us).max(0) as f64 / 1e6);
        if let Some(gws) = gateways.get(idx) {
            routing.route(&delivery, gws);
        }
    }
    if !lease.is_valid() {
        // Persisted (idempotently) but not acked: the next holder publishes.
        return Ok(());
    }
    let mut pipe = redis::pipe();
    let published = routing.add_publishes(&mut pipe);
    pipe.xack(stream, keys::CONSUMER_GROUP, &ids).ignore();
    if let Some(last) = ids.last() {
        // Everything up to `last` is processed and acked: entries below it can go.
        pipe.cmd("XTRIM")
            .arg(stream)
            .arg("MINID")
            .arg("~")
            .arg(last)
            .ignore();
    }
    let started = Instant::now();
    pipe.query_async::<()>(c).await?;
    metrics::counter!(m::WK_PUBLISHES).increment(published as u64);
    tracing::trace!(stream, entries = ids.len(), published, elapsed = ?started.elapsed(), "Batch done");
    Ok(())
}

fn decode(e: &StreamId) -> Option<Item> {
    let bytes = match e.map.get(STREAM_FIELD)? {
        redis::Value::BulkString(b) => b,
        _ => return None,
    };
    let entry = StreamEntry::decode(bytes).ok()?;
    let room = RoomId::parse(&entry.room).ok()?;
    Some(Item { entry, room })
}

/// A fresh epoch candidate; only used when a room's state is created.
fn new_epoch() -> String {
    format!("{:x}", now_us())
}
