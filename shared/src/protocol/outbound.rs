//! Server → client frames and the stored message record.
//!
//! One typed model, serialized by serde, serves WebSocket frames and HTTP
//! bodies alike: a history page over HTTP is the `data` of a `history`
//! frame. Stored records (JSON strings read from Redis) are embedded as
//! [`RawValue`]s, so they pass through unchanged and are never re-encoded.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ErrorCode, ProtocolError};

#[derive(Serialize)]
struct Frame<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
}

/// `{"type":<kind>,"data":<data>}`: every server frame's shape.
pub(crate) fn frame<T: Serialize>(kind: &str, data: T) -> String {
    // Serializing plain structs of strings, numbers and raw JSON cannot fail.
    serde_json::to_string(&Frame { kind, data }).unwrap_or_default()
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

/// `{"type":"error","data":{"code","message","client_id"?}}`.
pub fn error_frame(error: &ProtocolError, client_id: Option<&str>) -> String {
    frame(
        "error",
        ErrorData {
            code: error.code,
            message: &error.message,
            client_id,
        },
    )
}

/// The body of an HTTP error response: `{"error":{"code","message"}}`.
pub fn http_error_body(error: &ProtocolError) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        error: ErrorData<'a>,
    }
    serde_json::to_string(&Body {
        error: ErrorData {
            code: error.code,
            message: &error.message,
            client_id: None,
        },
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct AckData<'a> {
    client_id: Option<&'a str>,
    id: &'a str,
    timestamp: &'a str,
}

/// `{"type":"ack","data":{"client_id","id","timestamp"}}`, sent once the message
/// is durable in the Redis stream. `client_id` is `null` when none was given.
pub fn ack_frame(client_id: Option<&str>, id: &str, timestamp: &str) -> String {
    frame(
        "ack",
        AckData {
            client_id,
            id,
            timestamp,
        },
    )
}

/// Borrows a stored record as raw JSON; `None` when it is not valid JSON
/// (a record altered by hand in Redis), which callers skip.
fn raw_record(record_json: &str) -> Option<&RawValue> {
    serde_json::from_str(record_json).ok()
}

/// The live frame of a stored record: `{"type":"message","data":<record>}`
/// for a message; for a room event (a record that starts with its `type`,
/// e.g. `{"type":"edit",..}`), `{"type":"edit","data":<record without
/// type>}`. `None` when the record is not valid JSON.
pub fn live_frame(record_json: &str) -> Option<String> {
    let raw = raw_record(record_json)?;
    match event_type(record_json) {
        None => Some(frame("message", raw)),
        Some((kind, rest)) => {
            let mut out = String::with_capacity(record_json.len() + 16);
            out.push_str("{\"type\":\"");
            out.push_str(kind);
            out.push_str("\",\"data\":{");
            out.push_str(rest);
            out.push('}');
            Some(out)
        }
    }
}

/// Splits an event record `{"type":"<kind>",<rest>` into its kind and the
/// rest (fields and closing brace); `None` for a message record.
fn event_type(record_json: &str) -> Option<(&str, &str)> {
    let tail = record_json.strip_prefix("{\"type\":\"")?;
    let (kind, rest) = tail.split_once('"')?;
    let rest = rest.strip_prefix(',')?;
    kind.bytes()
        .all(|b| b.is_ascii_lowercase())
        .then_some((kind, rest))
}

/// Metadata of a history answer beyond the records themselves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryMeta {
    /// The room the records belong to.
    pub room: String,
    /// The room's sequence epoch; changes when its history and `seq` were lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The smallest `seq` still held in history, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_seq: Option<u64>,
    /// The newest `seq` assigned in the room so far (0 when none).
    pub latest_seq: u64,
    /// Set on recovery (`since=`) when messages after `since` were already
    /// trimmed: the client missed some messages for good.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Why recovery was impossible, e.g. `epoch_changed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<&'static str>,
    /// Set on every frame but the last when a history answer is split into
    /// several frames (each at most [`HISTORY_FRAME_BYTES`] of records).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// A history answer: the `data` of a `history` frame, and the body of
/// `GET /rooms/{room}/messages`.
#[derive(Debug, Serialize)]
pub struct HistoryData<'a> {
    /// Stored records, oldest first, embedded verbatim.
    pub messages: Vec<&'a RawValue>,
    /// Room, sequence state and flags.
    #[serde(flatten)]
    pub meta: &'a HistoryMeta,
}

impl<'a> HistoryData<'a> {
    /// Builds the answer from stored records, skipping any that are not JSON.
    pub fn new(meta: &'a HistoryMeta, records: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            messages: records.into_iter().filter_map(raw_record).collect(),
            meta,
        }
    }

    /// Serialized as a JSON object (an HTTP body).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Largest amount of record JSON packed into one history frame. Longer
/// answers are split (records stay oldest first across the frames), so no
/// frame outgrows the socket's write buffer.
pub const HISTORY_FRAME_BYTES: usize = 64 * 1024;

/// A history answer as one or more frames: records packed greedily up to
/// `max_bytes` each (a single larger record gets a frame of its own); every
/// frame but the last carries `"more":true`.
pub fn history_frames<'a>(
    meta: &HistoryMeta,
    records: impl IntoIterator<Item = &'a str>,
    max_bytes: usize,
) -> Vec<String> {
    let mut chunks: Vec<Vec<&str>> = vec![Vec::new()];
    let mut size = 0;
    for r in records {
        let current = chunks.last_mut().expect("never empty");
        if !current.is_empty() && size + r.len() > max_bytes {
            chunks.push(Vec::new());
            size = 0;
        }
        size += r.len() + 1;
        chunks.last_mut().expect("never empty").push(r);
    }
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut m = meta.clone();
            m.more = i < last;
            history_frame(&m, chunk)
        })
        .collect()
}

/// `{"type":"history","data":{"messages":[<records>],"room":..,..meta}}`.
pub fn history_frame<'a>(
    meta: &'a HistoryMeta,
    records: impl IntoIterator<Item = &'a str>,
) -> String {
    frame("history", HistoryData::new(meta, records))
}

/// The stored history record: the spec's server→client `data` object plus `seq`.
///
/// The worker writes it in two steps: serde serializes every field but `seq`
/// ([`crate::model::envelope::StreamEntry::record_prefix`]), and the persistence
/// script appends `,"seq":N}` once it has assigned `N` atomically with the
/// append. Unit tests there check that the result parses as this type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// UUID v7 assigned by the gateway.
    pub id: String,
    /// The room.
    pub room: String,
    /// The text.
    pub message: String,
    /// The sender's display name.
    pub username: String,
    /// The sender's user id (the token's `sub`) when authentication is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// RFC 3339 UTC with milliseconds and `Z`.
    pub timestamp: String,
    /// Per-room sequence number, +1 per message, assigned by the worker.
    pub seq: u64,
}

/// Reads only the `seq` of a stored record without parsing the rest.
pub fn record_seq(record_json: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    serde_json::from_str::<SeqOnly>(record_json)
        .ok()
        .map(|s| s.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_valid_json() {
        let rec = r#"{"id":"i","room":"r","message":"m","username":"u","timestamp":"t","seq":3}"#;
        let m: serde_json::Value = serde_json::from_str(&live_frame(rec).unwrap()).unwrap();
        assert_eq!(m["data"]["seq"], 3);
        assert!(live_frame("{\"seq\":").is_none());
        let ev = r#"{"type":"edit","room":"r","id":"i","message":"n","seq":4}"#;
        let e: serde_json::Value = serde_json::from_str(&live_frame(ev).unwrap()).unwrap();
        assert_eq!(e["type"], "edit");
        assert_eq!(e["data"]["seq"], 4);
        assert_eq!(e["data"]["id"], "i");
        assert!(e["data"].get("type").is_none());
        let meta = HistoryMeta {
            room: "r".into(),
            latest_seq: 3,
            ..Default::default()
        };
        let h: serde_json::Value = serde_json::from_str(&history_frame(&meta, [rec, rec])).unwrap();
        assert_eq!(h["type"], "history");
        assert_eq!(h["data"]["messages"].as_array().unwrap().len(), 2);
        assert_eq!(h["data"]["room"], "r");
        let split = history_frames(&meta, [rec, rec, rec], rec.len() * 2 + 2);
        assert_eq!(split.len(), 2);
        let first: serde_json::Value = serde_json::from_str(&split[0]).unwrap();
        let second: serde_json::Value = serde_json::from_str(&split[1]).unwrap();
        assert_eq!(first["data"]["messages"].as_array().unwrap().len(), 2);
        assert_eq!(first["data"]["more"], true);
        assert!(second["data"].get("more").is_none());
        assert_eq!(history_frames(&meta, [], 10).len(), 1);
        let empty: serde_json::Value = serde_json::from_str(&history_frame(&meta, [])).unwrap();
        assert_eq!(empty["data"]["messages"].as_array().unwrap().len(), 0);
        let a: serde_json::Value = serde_json::from_str(&ack_frame(None, "i", "t")).unwrap();
        assert_eq!(a["data"]["client_id"], serde_json::Value::Null);
        assert_eq!(record_seq(rec), Some(3));
    }

    #[test]
    fn http_page_and_ws_frame_share_one_shape() {
        let rec = r#"{"id":"i","room":"r","message":"m","username":"u","timestamp":"t","seq":3}"#;
        let meta = HistoryMeta {
            room: "r".into(),
            latest_seq: 3,
            oldest_seq: Some(3),
            ..Default::default()
        };
        let page: serde_json::Value =
            serde_json::from_str(&HistoryData::new(&meta, [rec]).to_json()).unwrap();
        let ws: serde_json::Value = serde_json::from_str(&history_frame(&meta, [rec])).unwrap();
        assert_eq!(page, ws["data"]);
        assert!(
            page.get("epoch").is_none(),
            "absent fields are left out, never null"
        );
        assert_eq!(page["messages"][0]["seq"], 3);
    }
}
