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

use std::borrow::Cow;

use axum::response::sse::Event;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The SSE comment that keeps an idle stream alive.
pub(crate) const KEEPALIVE: &str = "keepalive";

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

/// The event for one frame. The gateway's JSON never holds a raw line
/// break (serde escapes them in strings); one in a record written by
/// another program is JSON whitespace and becomes a space.
pub(crate) fn event(text: &str) -> Event {
    let id = event_id(text);
    let event = Event::default().data(one_line(text));
    match id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
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
}
