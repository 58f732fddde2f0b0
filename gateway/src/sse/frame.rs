//! One outbound frame as a server-sent event: `data:` is the frame's JSON
//! exactly as `/ws` sends it, and the frames that move the client's place in
//! the room's sequence carry `id:`, so a reconnecting `EventSource` resumes
//! with `Last-Event-ID` where it stopped.
//!
//! The id of a seq'd frame (`message`, `edit`, `delete`, `reaction`) is its
//! `seq`. A `history` frame's id is the newest `seq` it holds, or its
//! `latest_seq` when it holds none and is neither a partial answer (`more`)
//! nor `truncated` (an empty join or recovery: everything up to
//! `latest_seq` is accounted for). Other frames (acks, typing, presence,
//! errors, the session) have no id.
//!
//! Events are written as bytes, byte for byte what axum's `Event` writes,
//! so that a live message's event is encoded once and shared by every
//! `/sse` member of its room ([`live`]) instead of parsed and formatted per
//! connection.

use std::borrow::Cow;
use std::fmt::Write as _;

use axum::body::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::delivery::registry::LiveMessage;

/// The SSE comment that keeps an idle stream alive.
pub(crate) const KEEPALIVE: Bytes = Bytes::from_static(b": keepalive\n\n");

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    data: Option<PeekData>,
}

#[derive(Deserialize)]
struct PeekData {
    seq: Option<u64>,
    latest_seq: Option<u64>,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    truncated: bool,
    messages: Option<Vec<PeekSeq>>,
}

#[derive(Deserialize)]
struct PeekSeq {
    seq: Option<u64>,
    #[serde(flatten)]
    _rest: Option<IgnoredAny>,
}

/// Whether a frame of this type can carry an id (the others are not
/// parsed at all).
fn sequenced(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("{\"type\":\"") else {
        // Not the shape the gateway writes: look inside to be sure.
        return true;
    };
    ["message\"", "edit\"", "delete\"", "reaction\"", "history\""]
        .iter()
        .any(|t| rest.starts_with(t))
}

/// The event id of a frame, if it has one.
pub(crate) fn event_id(text: &str) -> Option<u64> {
    if !sequenced(text) {
        return None;
    }
    let peek: Peek<'_> = serde_json::from_str(text).ok()?;
    let data = peek.data?;
    match peek.kind {
        "message" | "edit" | "delete" | "reaction" => data.seq,
        "history" => {
            let newest = data.messages.iter().flatten().filter_map(|m| m.seq).max();
            match newest {
                Some(seq) => Some(seq),
                None if !data.more && !data.truncated => data.latest_seq,
                None => None,
            }
        }
        _ => None,
    }
}

/// The event for one frame: `data: <frame>`, then `id: <id>` when it has
/// one, then the blank line that ends it. The gateway's JSON never holds a
/// raw line break (serde escapes them in strings); one in a record written
/// by another program is JSON whitespace and becomes a space.
pub(crate) fn event(text: &str) -> Bytes {
    let id = event_id(text);
    let data = one_line(text);
    let mut out = String::with_capacity(data.len() + 32);
    // As axum's `Event::data`: no field for no data.
    if !data.is_empty() {
        out.push_str("data: ");
        out.push_str(&data);
        out.push('\n');
    }
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    out.push('\n');
    Bytes::from(out)
}

/// The event of a live message: encoded by the first `/sse` member of the
/// room to write it, then the same bytes for the others.
pub(crate) fn live(live: &LiveMessage) -> Bytes {
    live.sse_event(event)
}

/// A comment line (`: <text>`) as a whole event; line breaks become spaces.
pub(crate) fn comment(text: &str) -> Bytes {
    Bytes::from(format!(": {}\n\n", one_line(text)))
}

/// `text` without line breaks (an SSE `data:` field ends at one).
fn one_line(text: &str) -> Cow<'_, str> {
    if text.contains(['\n', '\r']) {
        Cow::Owned(text.replace(['\n', '\r'], " "))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::response::sse::{Event, Sse};
    use axum::response::IntoResponse;

    use super::*;

    #[test]
    fn seqd_frames_carry_their_seq() {
        let m = r#"{"type":"message","data":{"id":"x","room":"r","message":"\"seq\":9","seq":42}}"#;
        assert_eq!(event_id(m), Some(42));
        let e = r#"{"type":"edit","data":{"room":"r","id":"x","seq":7}}"#;
        assert_eq!(event_id(e), Some(7));
        let ack = r#"{"type":"ack","data":{"client_id":"c","id":"x"}}"#;
        assert_eq!(event_id(ack), None);
        let typing = r#"{"type":"typing","data":{"room":"r","active":true}}"#;
        assert_eq!(event_id(typing), None);
    }

    #[test]
    fn history_frames_carry_their_newest_seq() {
        let h = r#"{"type":"history","data":{"messages":[{"seq":3},{"type":"edit","seq":5}],"room":"r","latest_seq":9}}"#;
        assert_eq!(event_id(h), Some(5));
        let empty = r#"{"type":"history","data":{"messages":[],"room":"r","latest_seq":9}}"#;
        assert_eq!(event_id(empty), Some(9));
        let trimmed = r#"{"type":"history","data":{"messages":[],"room":"r","latest_seq":9,"truncated":true}}"#;
        assert_eq!(event_id(trimmed), None);
    }

    #[test]
    fn line_breaks_never_split_an_event() {
        assert_eq!(one_line("{\"a\":\r\n1}"), "{\"a\":  1}");
        assert!(matches!(one_line("{}"), Cow::Borrowed(_)));
    }

    /// What axum's `Sse` writes for `event`.
    async fn written_by_axum(event: Event) -> Bytes {
        let body = Sse::new(futures_util::stream::iter([Ok::<_, Infallible>(event)]));
        axum::body::to_bytes(body.into_response().into_body(), usize::MAX)
            .await
            .unwrap()
    }

    /// The wire format is axum's, which clients were served before events
    /// were encoded here.
    #[tokio::test]
    async fn events_are_byte_for_byte_axums() {
        for text in [
            r#"{"type":"message","data":{"id":"x","room":"r","seq":42}}"#,
            r#"{"type":"history","data":{"messages":[],"room":"r","latest_seq":9}}"#,
            r#"{"type":"ack","data":{"client_id":"c","id":"x"}}"#,
            "{\"type\":\"edit\",\r\n\"data\":{\"seq\":7}}",
            "",
        ] {
            let axums = Event::default().data(one_line(text));
            let axums = match event_id(text) {
                Some(id) => axums.id(id.to_string()),
                None => axums,
            };
            assert_eq!(event(text), written_by_axum(axums).await, "{text:?}");
        }
        let keepalive = Event::default().comment("keepalive");
        assert_eq!(KEEPALIVE, written_by_axum(keepalive).await);
        let close = Event::default().comment("close 1001 going  away");
        assert_eq!(
            comment("close 1001 going\r\naway"),
            written_by_axum(close).await
        );
    }

    /// Every `/sse` member of a room writes the same bytes for a live
    /// message, encoded once.
    #[test]
    fn a_live_messages_event_is_encoded_once() {
        let frame = r#"{"type":"message","data":{"room":"r","seq":5}}"#;
        let live = LiveMessage::new(5, "e".into(), frame.into());
        let (a, b) = (super::live(&live), super::live(&live));
        assert_eq!(
            a,
            "data: {\"type\":\"message\",\"data\":{\"room\":\"r\",\"seq\":5}}\nid: 5\n\n"
        );
        assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer, shared");
    }
}
