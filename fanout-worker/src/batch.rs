//! One batch of stream entries, in five stages, each a file: decode →
//! persist (and look up gateways) → route → publish → ack.
//!
//! A batch costs two round trips. The first pipeline persists every message
//! (Lua, idempotent: `persist`), marks the batch's rooms active and, after
//! those writes, reads which gateways own connections in the rooms. The second
//! publishes one delivery batch per gateway (`publish`), `XACK`s the entries
//! and trims the stream below them (never below a pending entry: `stream`);
//! with webhooks on, the `XACK` is done by a script that first queues the
//! routed records in the shard's webhook outbox (`webhook::outbox`), so an
//! entry is never acked before its records are queued, and the batch never
//! waits on HTTP.
//! Entries are acked only after they are persisted and published, and only
//! while the lease surely holds, so a crash or a lost lease at any point
//! leaves them pending for the next holder, which redoes them idempotently.
//! Entries of a newer envelope version, and their rooms' later entries, are
//! not processed nor acked at all (`hold`).

mod ack;
mod decode;
mod persist;
mod publish;
mod route;
#[cfg(test)]
mod tests;

use chat_shared::envelope::now_us;
use chat_shared::metrics as m;
use chat_shared::redis::{Conn, RedisError};
use redis::streams::StreamId;

use crate::hold::Hold;
use crate::lease::LeaseClock;
use crate::stream::Scripts;
use crate::webhook::outbox::Outbox;
use crate::Context;

/// Where a batch's entries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Read for the first time (`XREADGROUP >`).
    New,
    /// Claimed from the pending list: read before, by this or another worker.
    Claimed,
}

/// The scripts a batch runs.
#[derive(Debug)]
pub(crate) struct BatchScripts<'a> {
    /// The persistence script.
    pub(crate) persist: &'a redis::Script,
    /// The stream scripts (trim).
    pub(crate) stream: &'a Scripts,
    /// The shard's webhook outbox, when webhooks are on.
    pub(crate) outbox: Option<Outbox<'a>>,
}

/// Runs one non-empty batch of `stream` through the five stages, in order.
///
/// # Errors
/// Fails when either round trip fails; the entries then stay pending.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn process(
    c: &mut Conn,
    scripts: &BatchScripts<'_>,
    stream: &str,
    ctx: &Context,
    lease: &LeaseClock,
    hold: &mut Hold,
    entries: Vec<StreamId>,
    origin: Origin,
) -> Result<(), RedisError> {
    metrics::histogram!(m::WK_BATCH_SIZE).record(entries.len() as f64);
    let batch = decode::decode(stream, entries, hold, origin);
    if batch.ids.is_empty() {
        // Every entry is held: nothing to persist or ack.
        return Ok(());
    }
    let stored =
        persist::persist_and_look_up(c, scripts.persist, &ctx.config, &batch.items).await?;
    let now = now_us();
    let routed = route::route(&batch.items, stored, now, scripts.outbox.is_some());
    if !lease.is_valid() {
        // Persisted (idempotently) but not acked: the next holder publishes.
        return Ok(());
    }
    let applied = ack::applied_by_room(&batch.items);
    // Publishes, then acks, in one pipeline: one round trip.
    let mut pipe = redis::pipe();
    let published = publish::publish(
        &mut pipe,
        c.publish_command(),
        scripts.outbox.as_ref(),
        routed,
        now,
        stream,
        &batch.ids,
    );
    ack::acknowledge(
        c,
        pipe,
        scripts.stream,
        stream,
        &batch.ids,
        &applied,
        published,
    )
    .await
}
