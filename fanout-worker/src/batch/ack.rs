//! Stage 5 of a batch: ack every entry, trim the stream and take the acked
//! entries out of their rooms' records of applied entries, after the
//! publishes in the same pipeline, then send it: one round trip.

use std::time::Instant;

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::{Conn, RedisError};

use super::decode::Item;
use super::publish::Published;
use crate::persist;
use crate::stream::Scripts;

/// Completes the batch's last pipeline (`pipe`, holding the publishes) with
/// the acks, the trim and the forgetting of applied entries, and sends it.
///
/// # Errors
/// Fails when the round trip fails; the entries then stay pending.
pub(super) async fn acknowledge(
    c: &mut Conn,
    mut pipe: redis::Pipeline,
    scripts: &Scripts,
    stream: &str,
    ids: &[String],
    applied: &[(&RoomId, Vec<&str>)],
    published: Published,
) -> Result<(), RedisError> {
    add_ack_and_trim(&mut pipe, scripts, stream, ids, !published.queued);
    for (room, entry_ids) in applied {
        persist::add_forget_applied(&mut pipe, room, entry_ids);
    }
    let started = Instant::now();
    let replies: Vec<u64> = pipe.query_async(c).await?;
    let published = published.batches;
    metrics::counter!(m::WK_PUBLISHES).increment(published as u64);
    let dropped = replies.first().copied().unwrap_or(0);
    if dropped > 0 {
        metrics::counter!(m::WK_WEBHOOK_EVENTS_DROPPED, "reason" => "queue_full")
            .increment(dropped);
        tracing::debug!(stream, dropped, "Webhook outbox full; records dropped");
    }
    tracing::trace!(stream, entries = ids.len(), published, elapsed = ?started.elapsed(), "Batch done");
    Ok(())
}

/// The batch's entry ids per room, for the rooms' records of applied
/// entries (forgotten once acked).
pub(super) fn applied_by_room(items: &[Item]) -> Vec<(&RoomId, Vec<&str>)> {
    let mut by_room: Vec<(&RoomId, Vec<&str>)> = Vec::new();
    for item in items {
        match by_room.iter_mut().find(|(r, _)| **r == item.room) {
            Some((_, ids)) => ids.push(&item.entry_id),
            None => by_room.push((&item.room, vec![&item.entry_id])),
        }
    }
    by_room
}

/// Adds the acknowledge stage's `XACK` (unless `ack` is false: the outbox
/// script acked already) and trim to `pipe`, after the publishes: an entry
/// is acked only once its deliveries are on their way. Neither has a reply.
pub(super) fn add_ack_and_trim(
    pipe: &mut redis::Pipeline,
    scripts: &Scripts,
    stream: &str,
    ids: &[String],
    ack: bool,
) {
    if let Some(last) = ids.last() {
        if ack {
            pipe.xack(stream, keys::CONSUMER_GROUP, ids).ignore();
        }
        // Everything up to `last` is processed and acked: entries below it
        // can go, unless still pending (held, or a failed batch's).
        scripts.add_trim(pipe, stream, last);
    }
}
