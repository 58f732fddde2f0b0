//! What an append takes and gives back: the [`Draft`] a connection (or the
//! publish API) asks to store, the [`AppendLimits`] it is subject to, the
//! [`Appended`] ack or the [`AppendError`]; and the stamping of a draft into
//! a stream entry (id, timestamp) by [`super::append`].

use chat_shared::config::ReplicaAck;
use chat_shared::envelope::{now_us, EventKind, RoomEvent, StreamEntry};
use chat_shared::ids::{RoomId, Username};
use chat_shared::protocol::{Attachment, ErrorCode, ProtocolError};

use crate::hook::{self, Subject};

/// What the sender's ack needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The UUID v7 assigned to the message (the original one for a repeat).
    pub id: String,
    /// The timestamp assigned to the message (the original one for a repeat).
    pub timestamp: String,
    /// Whether this was a repeat of a `client_id` already stored.
    pub repeat: bool,
}

/// Why a message was not stored (or not acknowledged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Redis did not take the batch (unreachable, timed out, failed): it was
    /// stored entirely or not at all.
    #[error("Redis unavailable")]
    Redis,
    /// The shard's backlog is at `STREAM_BACKLOG_MAX`: workers are down or behind.
    #[error("stream backlog full")]
    BacklogFull,
    /// An earlier message of the same connection was not stored, so this
    /// one was not tried: storing it would put it before the earlier one's
    /// resend.
    #[error("an earlier message was not stored")]
    AfterFailure,
    /// Fewer replicas than `ACK_AFTER_REPLICAS` confirmed the entry in time:
    /// it may be stored (a resend with the same `client_id` is deduplicated),
    /// but it is not acked.
    #[error("not confirmed by enough replicas")]
    NotReplicated,
    /// The pre-publish hook rejected it, with this reason (error `rejected`).
    #[error("rejected by the publish hook")]
    Rejected(String),
    /// The pre-publish hook failed (timeout, error status, malformed
    /// answer) and the gateway fails closed.
    #[error("the publish hook failed")]
    HookFailed,
}

impl AppendError {
    /// The code of the error the sender gets: `rejected` for a hook's
    /// rejection, else `unavailable` (the sender resends).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Rejected(_) => ErrorCode::Rejected,
            _ => ErrorCode::Unavailable,
        }
    }

    /// The error the sender gets.
    pub fn to_protocol(&self) -> ProtocolError {
        ProtocolError::new(self.code(), self.client_message())
    }

    /// The `message` of the error the sender gets.
    pub fn client_message(&self) -> &str {
        match self {
            Self::Rejected(reason) => reason,
            Self::HookFailed => hook::UNAVAILABLE_MESSAGE,
            Self::BacklogFull => "not stored: the room's stream backlog is full; retry later",
            Self::Redis => "not stored: Redis unavailable; retry with the same client_id",
            Self::AfterFailure => {
                "not stored: an earlier message of this connection was not stored; resend from the first unacknowledged one"
            }
            Self::NotReplicated => {
                "not acknowledged: fewer replicas than ACK_AFTER_REPLICAS confirmed it in time; resend with the same client_id"
            }
        }
    }
}

/// Limits an append is subject to.
#[derive(Debug, Clone, Copy)]
pub struct AppendLimits {
    /// Number of stream shards.
    pub shards: u32,
    /// Most entries a shard may hold before appends are refused (0 = no cap).
    pub backlog_max: u64,
    /// How long a `client_id` is remembered for deduplication, in seconds.
    pub dedupe_window_secs: u64,
    /// `ACK_AFTER_REPLICAS`: ack only once replicas hold the entry.
    pub replica_ack: Option<ReplicaAck>,
}

/// What a connection (or the publish API) asks to append: a message, or a
/// room event when `event` is set (an edit's new text is in `message`).
#[derive(Debug, Clone)]
pub struct Draft {
    /// The sender's display name.
    pub username: Username,
    /// The sender's token `sub` when authentication is on.
    pub user_id: Option<String>,
    /// The client's nonce (deduplication).
    pub client_id: Option<String>,
    /// The text (empty for a delete or a reaction).
    pub message: String,
    /// The message answered, already checked to exist.
    pub reply_to: Option<String>,
    /// Validated attachments.
    pub attachments: Vec<Attachment>,
    /// The room event, if this is one.
    pub event: Option<RoomEvent>,
}

impl Draft {
    /// What the pre-publish hook is asked about this draft: messages and
    /// edits; `None` for deletes and reactions (they carry no text).
    pub fn subject<'a>(&'a self, room: &'a RoomId) -> Option<Subject<'a>> {
        let (kind, id) = match &self.event {
            None => (hook::Kind::Message, None),
            Some(e) if e.kind == EventKind::Edit => (hook::Kind::Edit, Some(e.target.as_str())),
            Some(_) => return None,
        };
        Some(Subject {
            kind,
            room: room.as_str(),
            user_id: self.user_id.as_deref(),
            username: self.username.as_str(),
            message: &self.message,
            client_id: self.client_id.as_deref(),
            reply_to: self.reply_to.as_deref(),
            attachments: &self.attachments,
            id,
        })
    }

    /// A plain message.
    pub fn message(
        username: Username,
        user_id: Option<String>,
        client_id: Option<String>,
        message: String,
    ) -> Self {
        Self {
            username,
            user_id,
            client_id,
            message,
            reply_to: None,
            attachments: Vec::new(),
            event: None,
        }
    }
}

/// One message of a batch, stamped and encoded.
pub(super) struct Stamped {
    /// The stream entry, with its id and timestamp.
    pub(super) entry: StreamEntry,
    /// The client's nonce (deduplication).
    pub(super) client_id: Option<String>,
}

impl Stamped {
    pub(super) fn new(room: &RoomId, draft: Draft) -> Self {
        let now = chrono::Utc::now();
        let Draft {
            username,
            user_id,
            client_id,
            message,
            reply_to,
            attachments,
            event,
        } = draft;
        let mut entry = StreamEntry {
            v: 0,
            id: uuid::Uuid::now_v7().to_string(),
            room: room.to_string(),
            username: username.into_string(),
            message,
            timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            stamped_us: now_us(),
            user_id,
            reply_to,
            attachments,
            event,
        };
        entry.v = entry.required_version();
        Self { entry, client_id }
    }

    /// Messages go into the room's message index; events do not.
    pub(super) fn indexed(&self) -> bool {
        self.entry.event.is_none()
    }
}
