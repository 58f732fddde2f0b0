//! Stage 4 of a batch: the publishes of the delivery batches, and with
//! webhooks the queueing of the routed records in the shard's outbox, at the
//! head of the batch's last pipeline (sent by [`super::ack`]).

use super::route::Routed;
use crate::webhook::outbox::Outbox;

/// What the publish stage put in the pipeline.
#[derive(Debug, Clone, Copy)]
pub(super) struct Published {
    /// Delivery batches published (one per gateway).
    pub(super) batches: usize,
    /// Whether the outbox script queues the records and acks the entries
    /// itself (then the ack stage only trims).
    pub(super) queued: bool,
}

/// Adds one publish per gateway to `pipe` (`command`: `PUBLISH`, or
/// `SPUBLISH` on a cluster) and, with webhooks, the outbox script that
/// queues the records and then acks `ids` (so an entry is never acked
/// unless its records are queued; its answer is the pipeline's only reply).
pub(super) fn publish(
    pipe: &mut redis::Pipeline,
    command: &str,
    outbox: Option<&Outbox<'_>>,
    routed: Routed,
    now_us: i64,
    stream: &str,
    ids: &[String],
) -> Published {
    let batches = routed.routing.add_publishes(pipe, command);
    let queued = match outbox {
        Some(outbox) => outbox.add_append_and_ack(pipe, &routed.webhook, now_us, stream, ids),
        None => false,
    };
    Published { batches, queued }
}
