//! The request a webhook receives: its JSON body and its `webhook-id`.
//!
//! The body is `{"events":[<record>,…]}`: each stored record embedded
//! verbatim, in outbox order (so in `seq` order per room). A chat message
//! record has its `id`, `room` and `seq`; a room event record starts with its
//! `type` (`edit`, `delete`, `reaction`) and has its own `event_id`, the
//! target message's `id`, `room` and `seq`. How it is signed is
//! [`chat_shared::signing`]'s.
//!
//! **The `webhook-id`** is `msg_<shard>_<first>_<last>`, from the shard and
//! the outbox stream ids of the batch's first and last entries, e.g.
//! `msg_3_1718000000000-0_1718000000000-6`. It is derived, not stored: the
//! sender reads one batch at a time, and a batch that was not finished stays
//! pending as a whole, so whoever sends it again (a retry, the same worker
//! after a reconnect, or the next lease holder after a restart or takeover,
//! claiming up to `WEBHOOK_BATCH_MAX` pending entries in id order) rebuilds
//! the same entries and so the same id. A receiver can therefore drop a
//! `webhook-id` it has already handled. Outbox stream ids are unique and
//! increasing per shard, so two different batches never share an id. Only
//! a change of `WEBHOOK_BATCH_MAX` between two attempts can regroup pending
//! entries into another batch: it then gets another id, and its events
//! still carry their own `id` / `event_id` and `seq` for per-event
//! deduplication.

use redis::streams::StreamId;
use serde::Serialize;
use serde_json::value::RawValue;

use super::outbox::{PERSISTED_FIELD, RECORD_FIELD};

/// A batch ready to POST.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The `webhook-id`, the same for every attempt (see the module comment).
    pub(crate) id: String,
    /// The outbox entries it covers, all of them (also unreadable ones).
    pub(crate) ids: Vec<String>,
    /// The JSON body.
    pub(crate) body: Vec<u8>,
    /// Records in the body.
    pub(crate) records: usize,
    /// When each record was persisted (µs), for the latency histogram.
    pub(crate) persisted_us: Vec<i64>,
}

#[derive(Serialize)]
struct Body<'a> {
    events: Vec<&'a RawValue>,
}

/// Builds the batch of `entries`, read from `shard`'s outbox. An entry
/// without a record that parses as JSON (written by hand) is left out of the
/// body but still covered by the batch, so it is deleted with it.
pub(crate) fn build(shard: u32, entries: &[StreamId]) -> Batch {
    let mut raw = Vec::with_capacity(entries.len());
    let mut persisted_us = Vec::with_capacity(entries.len());
    for e in entries {
        let record: Option<String> = e.get(RECORD_FIELD);
        match record.and_then(|r| RawValue::from_string(r).ok()) {
            Some(r) => {
                raw.push(r);
                persisted_us.push(e.get(PERSISTED_FIELD).unwrap_or(0));
            }
            None => tracing::warn!(entry = %e.id, "Unreadable webhook outbox entry; skipping it"),
        }
    }
    let body = Body {
        events: raw.iter().map(AsRef::as_ref).collect(),
    };
    Batch {
        id: webhook_id(shard, entries),
        ids: entries.iter().map(|e| e.id.clone()).collect(),
        body: serde_json::to_vec(&body).unwrap_or_default(),
        records: raw.len(),
        persisted_us,
    }
}

/// `msg_<shard>_<first entry id>_<last entry id>`.
fn webhook_id(shard: u32, entries: &[StreamId]) -> String {
    let first = entries.first().map_or("", |e| e.id.as_str());
    let last = entries.last().map_or("", |e| e.id.as_str());
    format!("msg_{shard}_{first}_{last}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use redis::Value;

    use super::*;

    fn entry(id: &str, record: &str, at: &str) -> StreamId {
        StreamId {
            id: id.into(),
            map: HashMap::from([
                (
                    RECORD_FIELD.to_owned(),
                    Value::BulkString(record.as_bytes().to_vec()),
                ),
                (
                    PERSISTED_FIELD.to_owned(),
                    Value::BulkString(at.as_bytes().to_vec()),
                ),
            ]),
            ..StreamId::default()
        }
    }

    #[test]
    fn records_are_embedded_verbatim_and_unreadable_ones_skipped() {
        let msg = r#"{"id":"m1","room":"a","message":"h\/i","seq":1}"#;
        let edit = r#"{"type":"edit","room":"a","id":"m1","event_id":"e1","seq":2}"#;
        let batch = build(
            0,
            &[
                entry("1-0", msg, "10"),
                entry("2-0", "not json", "11"),
                entry("3-0", edit, "12"),
            ],
        );
        assert_eq!(batch.ids, ["1-0", "2-0", "3-0"]);
        assert_eq!(batch.records, 2);
        assert_eq!(batch.persisted_us, [10, 12]);
        assert_eq!(
            String::from_utf8(batch.body).unwrap(),
            format!(r#"{{"events":[{msg},{edit}]}}"#)
        );
    }

    #[test]
    fn the_webhook_id_names_the_shard_and_the_first_and_last_entries() {
        let rec = r#"{"id":"m1","room":"a","seq":1}"#;
        let batch = build(3, &[entry("5-0", rec, "1"), entry("7-2", "x", "1")]);
        assert_eq!(batch.id, "msg_3_5-0_7-2");
        // Rebuilt from the same entries (a retry, a claim after a restart):
        // the same id. Another shard with the same stream ids: another id.
        let again = build(3, &[entry("5-0", rec, "1"), entry("7-2", "x", "1")]);
        assert_eq!(again.id, batch.id);
        assert_eq!(
            build(0, &[entry("5-0", rec, "1"), entry("7-2", "x", "1")]).id,
            "msg_0_5-0_7-2"
        );
        assert_eq!(build(1, &[entry("9-0", rec, "1")]).id, "msg_1_9-0_9-0");
    }
}
