//! What a gateway appends to a shard stream: a [`StreamEntry`] (a message,
//! or a [`RoomEvent`] on one), its encoding and the spec record it becomes,
//! and [`NewerEntry`] for entries of a newer version.

use serde::{Deserialize, Serialize};

use super::{DecodeError, NEWEST_ENTRY_VERSION, ROOM_EVENTS_VERSION, VERSION};
use crate::protocol::{Attachment, ReactOp};

/// One chat message as the gateway stamped it, waiting in a shard stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// Envelope version ([`VERSION`]).
    pub v: u8,
    /// UUID v7 (string form).
    pub id: String,
    /// Validated room id.
    pub room: String,
    /// Validated display name.
    pub username: String,
    /// Validated message text.
    pub message: String,
    /// RFC 3339 UTC timestamp with milliseconds and `Z`.
    pub timestamp: String,
    /// Gateway stamp in Unix microseconds, for end-to-end latency metrics.
    pub stamped_us: i64,
    /// The sender's user id (the token's `sub`) when authentication is on.
    /// Optional and defaulted, so entries without it still decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The message of the same room this one answers (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Links to files (version 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Set when the entry is a room event rather than a message (version
    /// 2); an edit's new text is in `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<RoomEvent>,
}

/// What a room event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Replace the target's text.
    Edit,
    /// Delete the target.
    Delete,
    /// Add or remove one user's reaction to the target.
    React,
}

impl EventKind {
    /// The `type` of the event's frame and stored record.
    pub const fn frame_type(self) -> &'static str {
        match self {
            Self::Edit => "edit",
            Self::Delete => "delete",
            Self::React => "reaction",
        }
    }
}

/// A room event: an edit, a delete or a reaction, aimed at one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    /// What it does.
    pub kind: EventKind,
    /// The id of the message it changes.
    pub target: String,
    /// The reaction's emoji (reactions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// Whether the reaction is added or removed (reactions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<ReactOp>,
}

impl RoomEvent {
    /// An event of `kind` aimed at message `target`, without a reaction.
    pub fn new(kind: EventKind, target: String) -> Self {
        Self {
            kind,
            target,
            emoji: None,
            op: None,
        }
    }
}

/// The JSON record of a message without its closing `}` and `seq`: the worker's
/// persistence script appends `,"seq":N}` once it has assigned the sequence.
#[derive(Serialize)]
struct RecordPrefix<'a> {
    id: &'a str,
    room: &'a str,
    message: &'a str,
    username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    timestamp: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "<[Attachment]>::is_empty")]
    attachments: &'a [Attachment],
}

/// The JSON record of a room event without `seq` (and, for a reaction, the
/// resulting `count`, which the persistence script adds). `type` comes
/// first, so a reader tells events from messages by the record's start.
#[derive(Serialize)]
struct EventPrefix<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    room: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    emoji: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<ReactOp>,
    username: &'a str,
    user_id: Option<&'a str>,
    event_id: &'a str,
}

impl StreamEntry {
    /// Encodes as MessagePack (named fields, so fields can be added later).
    pub fn encode(&self) -> Vec<u8> {
        // Encoding a struct of strings and integers into a Vec cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Decodes an entry read from a stream.
    ///
    /// # Errors
    /// Fails on bytes that are not a version-1 entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let e: Self = rmp_serde::from_slice(bytes).map_err(|_| DecodeError)?;
        if !(VERSION..=NEWEST_ENTRY_VERSION).contains(&e.v) {
            return Err(DecodeError);
        }
        Ok(e)
    }

    /// The lowest version that carries every field this entry uses.
    pub fn required_version(&self) -> u8 {
        if self.reply_to.is_some() || !self.attachments.is_empty() || self.event.is_some() {
            ROOM_EVENTS_VERSION
        } else {
            VERSION
        }
    }

    /// The key permissions and reactions are counted by: the user id when
    /// authenticated, else the display name.
    pub fn user_key(&self) -> &str {
        self.user_id.as_deref().unwrap_or(&self.username)
    }

    /// The stored JSON record up to (not including) `,"seq":N}`.
    pub fn record_prefix(&self) -> String {
        let json = match &self.event {
            None => serde_json::to_string(&RecordPrefix {
                id: &self.id,
                room: &self.room,
                message: &self.message,
                username: &self.username,
                user_id: self.user_id.as_deref(),
                timestamp: &self.timestamp,
                reply_to: self.reply_to.as_deref(),
                attachments: &self.attachments,
            }),
            Some(event) => {
                let edit = event.kind == EventKind::Edit;
                serde_json::to_string(&EventPrefix {
                    kind: event.kind.frame_type(),
                    room: &self.room,
                    id: &event.target,
                    message: edit.then_some(self.message.as_str()),
                    edited_at: edit.then_some(self.timestamp.as_str()),
                    emoji: event.emoji.as_deref(),
                    op: event.op,
                    username: &self.username,
                    user_id: self.user_id.as_deref(),
                    event_id: &self.id,
                })
            }
        };
        let mut s = json.unwrap_or_default();
        s.pop(); // the closing brace
        s
    }
}

/// What can be read of an entry written by a newer version than this one:
/// its version and, if it still has one, its room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewerEntry {
    /// The entry's envelope version, above [`NEWEST_ENTRY_VERSION`].
    pub v: u8,
    /// The entry's `room` field, if it has a string one.
    pub room: Option<String>,
}

/// Only the fields a version check needs; unknown fields are ignored.
#[derive(Deserialize)]
struct Header {
    v: u8,
    room: Option<String>,
}

/// Only the version.
#[derive(Deserialize)]
struct VersionOnly {
    v: u8,
}

impl NewerEntry {
    /// Reads the version (and room) of bytes that [`StreamEntry::decode`]
    /// refused. `Some` when they carry a version above
    /// [`NEWEST_ENTRY_VERSION`]: an entry
    /// for a newer worker, not garbage.
    pub fn peek(bytes: &[u8]) -> Option<Self> {
        let (v, room) = match rmp_serde::from_slice::<Header>(bytes) {
            Ok(h) => (h.v, h.room),
            Err(_) => (rmp_serde::from_slice::<VersionOnly>(bytes).ok()?.v, None),
        };
        (v > NEWEST_ENTRY_VERSION).then_some(Self { v, room })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageRecord;

    fn entry() -> StreamEntry {
        StreamEntry {
            v: VERSION,
            id: "0190-uuid".into(),
            room: "lobby".into(),
            username: "ana \"quoted\"".into(),
            message: "hi\nthere ✓".into(),
            timestamp: "2026-11-25T14:00:00.123Z".into(),
            stamped_us: 42,
            user_id: None,
            reply_to: None,
            attachments: Vec::new(),
            event: None,
        }
    }

    #[test]
    fn stream_entry_round_trip() {
        let e = entry();
        assert_eq!(StreamEntry::decode(&e.encode()).unwrap(), e);
        assert!(StreamEntry::decode(b"garbage").is_err());
    }

    #[test]
    fn newer_versions_are_told_from_garbage() {
        let mut e = entry();
        assert_eq!(NewerEntry::peek(&e.encode()), None, "current version");
        e.v = ROOM_EVENTS_VERSION;
        assert_eq!(StreamEntry::decode(&e.encode()).unwrap(), e);
        assert_eq!(NewerEntry::peek(&e.encode()), None, "known version");
        e.v = NEWEST_ENTRY_VERSION + 1;
        assert!(StreamEntry::decode(&e.encode()).is_err());
        assert_eq!(
            NewerEntry::peek(&e.encode()),
            Some(NewerEntry {
                v: NEWEST_ENTRY_VERSION + 1,
                room: Some("lobby".into())
            })
        );
        // A newer layout whose room is not a string still counts as newer.
        #[derive(Serialize)]
        struct Other {
            v: u8,
            room: u32,
        }
        let other = rmp_serde::to_vec_named(&Other { v: 9, room: 3 }).unwrap();
        assert_eq!(
            NewerEntry::peek(&other),
            Some(NewerEntry { v: 9, room: None })
        );
        e.v = 0;
        assert_eq!(NewerEntry::peek(&e.encode()), None, "older is garbage");
        assert_eq!(NewerEntry::peek(b"garbage"), None);
    }

    #[test]
    fn prefix_plus_seq_is_the_spec_record() {
        let e = entry();
        let json = format!("{},\"seq\":7}}", e.record_prefix());
        let rec: MessageRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(rec.seq, 7);
        assert_eq!(rec.message, e.message);
        assert_eq!(rec.username, e.username);
        assert!(json.starts_with(r#"{"id":"#));
    }

    #[test]
    fn room_event_records_lead_with_their_type() {
        let mut e = entry();
        assert_eq!(e.required_version(), VERSION);
        e.reply_to = Some("m0".into());
        e.attachments = vec![Attachment {
            url: "https://x.io/a".into(),
            name: None,
            mime: None,
            size: Some(3),
        }];
        assert_eq!(e.required_version(), ROOM_EVENTS_VERSION);
        let json = format!("{},\"seq\":7}}", e.record_prefix());
        let rec: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(rec["reply_to"], "m0");
        assert_eq!(rec["attachments"][0]["size"], 3);
        assert!(json.ends_with(r#","seq":7}"#));

        let mut ev = entry();
        ev.event = Some(RoomEvent {
            kind: EventKind::React,
            target: "m1".into(),
            emoji: Some("👍".into()),
            op: Some(ReactOp::Add),
        });
        assert_eq!(StreamEntry::decode(&ev.encode()).unwrap(), ev);
        let json = format!("{},\"seq\":8}}", ev.record_prefix());
        assert!(json.starts_with(r#"{"type":"reaction","#), "{json}");
        let rec: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(rec["id"], "m1");
        assert_eq!(rec["event_id"], "0190-uuid");
        assert_eq!(rec["op"], "add");
        assert_eq!(rec["user_id"], serde_json::Value::Null);
        assert!(rec.get("message").is_none());
        ev.event = Some(RoomEvent {
            kind: EventKind::Edit,
            target: "m1".into(),
            emoji: None,
            op: None,
        });
        let rec: serde_json::Value =
            serde_json::from_str(&format!("{},\"seq\":9}}", ev.record_prefix())).unwrap();
        assert_eq!(rec["type"], "edit");
        assert_eq!(rec["message"], ev.message);
        assert_eq!(rec["edited_at"], ev.timestamp);
    }
}
