//! Stage 3 of a batch: turn what was stored into one delivery batch per
//! gateway (and the records for the webhook), in stream order.

use chat_shared::envelope::Delivery;
use chat_shared::metrics as m;
use chat_shared::protocol::record_seq;

use super::decode::Item;
use super::persist::Stored;
use crate::persist::Persisted;
use crate::publish::Routing;

/// What the route stage produced.
#[derive(Debug, Default)]
pub(super) struct Routed {
    /// One delivery batch per gateway.
    pub(super) routing: Routing,
    /// Every routed record, in stream order, for the webhook outbox (empty
    /// when webhooks are off).
    pub(super) webhook: Vec<Delivery>,
}

/// Stage 3: turns what was stored into one delivery batch per gateway, in
/// stream order, and (with `webhooks`) the list of records to queue for the
/// webhook. An entry stored before (re-processed after a takeover) is
/// delivered again with its stored record and `seq`, since its first delivery
/// may not have happened; one whose record left history is skipped.
pub(super) fn route(items: &[Item], stored: Stored, now_us: i64, webhooks: bool) -> Routed {
    let mut routing = Routing::default();
    let mut webhook = Vec::new();
    // Metric handles resolved once per batch, not per message.
    let publish_latency = metrics::histogram!(m::WK_PUBLISH_LATENCY_SECONDS);
    let persisted_total = metrics::counter!(m::WK_PERSISTED);
    let duplicate_total = metrics::counter!(m::WK_DUPLICATES);
    for (item, result) in items.iter().zip(stored.persisted) {
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
        let idx = stored
            .rooms
            .iter()
            .position(|r| r == &item.room)
            .unwrap_or(0);
        let delivery = Delivery {
            room: item.entry.room.clone(),
            seq,
            epoch,
            record,
            stamped_us: item.entry.stamped_us,
        };
        publish_latency.record((now_us - item.entry.stamped_us).max(0) as f64 / 1e6);
        if let Some(gws) = stored.gateways.get(idx) {
            routing.route(&delivery, gws);
        }
        if webhooks {
            webhook.push(delivery);
        }
    }
    Routed { routing, webhook }
}
