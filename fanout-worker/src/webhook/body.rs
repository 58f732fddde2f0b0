//! The request a webhook receives: its JSON body and its signature.
//!
//! The body is `{"events":[<record>,…]}`: each stored record embedded
//! verbatim, in outbox order (so in `seq` order per room). A chat message
//! record has its `id`, `room` and `seq`; a room event record starts with its
//! `type` (`edit`, `delete`, `reaction`) and has its own `event_id`, the
//! target message's `id`, `room` and `seq`. The header
//! `X-Chat-Signature: sha256=<hex>` is the HMAC-SHA256 of the exact body
//! bytes keyed with `WEBHOOK_SECRET`.

use hmac::{Hmac, Mac};
use redis::streams::StreamId;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::Sha256;

use super::outbox::{PERSISTED_FIELD, RECORD_FIELD};

/// The signature header.
pub(crate) const SIGNATURE_HEADER: &str = "X-Chat-Signature";

/// A batch ready to POST.
#[derive(Debug)]
pub(crate) struct Batch {
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

/// Builds the body of `entries`. An entry without a record that parses as
/// JSON (written by hand) is left out of the body but still covered by the
/// batch, so it is deleted with it.
pub(crate) fn build(entries: &[StreamId]) -> Batch {
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
        ids: entries.iter().map(|e| e.id.clone()).collect(),
        body: serde_json::to_vec(&body).unwrap_or_default(),
        records: raw.len(),
        persisted_us,
    }
}

/// `sha256=<hex HMAC-SHA256 of body keyed with secret>`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
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
        let batch = build(&[
            entry("1-0", msg, "10"),
            entry("2-0", "not json", "11"),
            entry("3-0", edit, "12"),
        ]);
        assert_eq!(batch.ids, ["1-0", "2-0", "3-0"]);
        assert_eq!(batch.records, 2);
        assert_eq!(batch.persisted_us, [10, 12]);
        assert_eq!(
            String::from_utf8(batch.body).unwrap(),
            format!(r#"{{"events":[{msg},{edit}]}}"#)
        );
    }

    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
