//! The client protocol: JSON text frames `{"type":..,"data":{..}}`.
//!
//! Inbound frames are parsed into [`ClientFrame`] and validated here, so the
//! gateway only sees well-formed requests or an [`ErrorCode`]. Outbound frames
//! are built as bytes; message and history frames embed the stored JSON record
//! verbatim, so a message is serialized once and never re-encoded per client.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{RoomId, Username, MAX_CLIENT_ID_CHARS};

/// The closed set of error codes sent in `error` frames and HTTP error bodies.
///
/// The README documents each one; clients may switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame is not JSON, or not an object with a string `type`.
    BadJson,
    /// The JSON is valid but `data` is missing or has fields of the wrong type.
    BadFrame,
    /// `type` is not one the server knows.
    UnknownType,
    /// A room id is missing or not 1–64 chars of `[A-Za-z0-9_.:-]`.
    InvalidRoom,
    /// `data.room` differs from the room of the connection.
    RoomMismatch,
    /// The message text is empty.
    EmptyMessage,
    /// The message text is longer than `MAX_MESSAGE_LEN` characters.
    MessageTooLong,
    /// The username is empty, too long or has control characters.
    InvalidUsername,
    /// `client_id` is longer than 128 characters.
    InvalidClientId,
    /// A query or request parameter is malformed (e.g. `limit`, `since`).
    InvalidParameter,
    /// The frame is larger than `MAX_FRAME_BYTES`.
    FrameTooLarge,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// The connection sends faster than its rate limit allows.
    RateLimited,
    /// The gateway is at `MAX_CONNECTIONS`.
    TooManyConnections,
    /// Redis is unreachable: the message was not stored and is not acked.
    Unavailable,
    /// Something unexpected failed inside the server; details are in its log.
    Internal,
    /// No such route.
    NotFound,
}

impl ErrorCode {
    /// The wire label, also used as a metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadFrame => "bad_frame",
            Self::UnknownType => "unknown_type",
            Self::InvalidRoom => "invalid_room",
            Self::RoomMismatch => "room_mismatch",
            Self::EmptyMessage => "empty_message",
            Self::MessageTooLong => "message_too_long",
            Self::InvalidUsername => "invalid_username",
            Self::InvalidClientId => "invalid_client_id",
            Self::InvalidParameter => "invalid_parameter",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::NotFound => "not_found",
        }
    }

    /// Every code, for documentation tests.
    pub const ALL: [ErrorCode; 17] = [
        Self::BadJson,
        Self::BadFrame,
        Self::UnknownType,
        Self::InvalidRoom,
        Self::RoomMismatch,
        Self::EmptyMessage,
        Self::MessageTooLong,
        Self::InvalidUsername,
        Self::InvalidClientId,
        Self::InvalidParameter,
        Self::FrameTooLarge,
        Self::BinaryNotSupported,
        Self::RateLimited,
        Self::TooManyConnections,
        Self::Unavailable,
        Self::Internal,
        Self::NotFound,
    ];
}

/// A protocol error: a code plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A short explanation for humans; never holds server internals.
    pub message: String,
}

impl ProtocolError {
    /// Builds an error from a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Limits that validation enforces; filled from the gateway's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum message length in characters (`MAX_MESSAGE_LEN`).
    pub max_message_chars: usize,
    /// Maximum history page size a client may request.
    pub max_history_limit: usize,
}

/// A validated client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"message",..}`: post a chat message to the connection's room.
    Message(OutgoingMessage),
    /// `{"type":"history","data":{"limit":N,"before_seq":S}}`: ask for a page.
    History(HistoryRequest),
}

/// A chat message as the client sent it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The message text, 1..=`max_message_chars` characters.
    pub message: String,
    /// The sender's display name: from the frame, else the connection's.
    pub username: Option<Username>,
    /// The client's nonce, echoed in `ack` and `error`.
    pub client_id: Option<String>,
}

/// A history page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Number of messages wanted; capped by the server.
    pub limit: Option<usize>,
    /// Only messages with `seq` below this.
    pub before_seq: Option<u64>,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

#[derive(Deserialize)]
struct RawHistory {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before_seq: Option<u64>,
}

/// What the client said before validation failed, so the error can echo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why the frame was refused.
    pub error: ProtocolError,
    /// The frame's `client_id`, when it could be read.
    pub client_id: Option<String>,
}

impl Rejected {
    fn new(code: ErrorCode, message: impl Into<String>, client_id: Option<String>) -> Self {
        Self {
            error: ProtocolError::new(code, message),
            client_id,
        }
    }
}

/// Parses and validates one text frame received on a connection to `room`.
///
/// # Errors
/// Returns a [`Rejected`] carrying the error code to send back.
pub fn parse_client_frame(
    text: &str,
    room: &RoomId,
    limits: &Limits,
) -> Result<ClientFrame, Rejected> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|_| {
        Rejected::new(
            ErrorCode::BadJson,
            "frame must be a JSON object with a string \"type\"",
            None,
        )
    })?;
    match raw.kind.as_ref() {
        "message" => parse_message(raw.data, room, limits).map(ClientFrame::Message),
        "history" => parse_history(raw.data, limits).map(ClientFrame::History),
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(Rejected::new(
                ErrorCode::UnknownType,
                format!("unknown frame type {shown:?}; expected \"message\" or \"history\""),
                None,
            ))
        }
    }
}

fn parse_message(
    data: Option<&RawValue>,
    room: &RoomId,
    limits: &Limits,
) -> Result<OutgoingMessage, Rejected> {
    let data = data
        .ok_or_else(|| Rejected::new(ErrorCode::BadFrame, "\"data\" object is required", None))?;
    let raw: RawMessage = serde_json::from_str(data.get()).map_err(|_| {
        Rejected::new(
            ErrorCode::BadFrame,
            "\"data\" must be an object whose room, message, username and client_id are strings",
            None,
        )
    })?;
    let client_id = raw.client_id;
    if let Some(id) = &client_id {
        if id.chars().count() > MAX_CLIENT_ID_CHARS {
            return Err(Rejected::new(
                ErrorCode::InvalidClientId,
                format!("client_id is longer than {MAX_CLIENT_ID_CHARS} characters"),
                None,
            ));
        }
    }
    let reject = |code, msg: String| Err(Rejected::new(code, msg, client_id.clone()));
    match raw.room.as_deref() {
        None => return reject(ErrorCode::InvalidRoom, "data.room is required".into()),
        Some(r) if RoomId::parse(r).is_err() => {
            return reject(
                ErrorCode::InvalidRoom,
                "data.room must be 1-64 characters of [A-Za-z0-9_.:-]".into(),
            )
        }
        Some(r) if r != room.as_str() => {
            return reject(
                ErrorCode::RoomMismatch,
                format!("this connection is joined to room {:?}", room.as_str()),
            )
        }
        Some(_) => {}
    }
    let Some(message) = raw.message else {
        return reject(ErrorCode::EmptyMessage, "data.message is required".into());
    };
    if message.is_empty() {
        return reject(
            ErrorCode::EmptyMessage,
            "data.message must not be empty".into(),
        );
    }
    // Fast path: byte length bounds char count from above.
    if message.len() > limits.max_message_chars
        && message.chars().count() > limits.max_message_chars
    {
        return reject(
            ErrorCode::MessageTooLong,
            format!(
                "data.message is longer than {} characters",
                limits.max_message_chars
            ),
        );
    }
    let username = match raw.username {
        None => None,
        Some(u) => match Username::parse(&u) {
            Ok(u) => Some(u),
            Err(_) => {
                return reject(
                    ErrorCode::InvalidUsername,
                    "data.username must be 1-64 characters without control characters".into(),
                )
            }
        },
    };
    Ok(OutgoingMessage {
        message,
        username,
        client_id,
    })
}

fn parse_history(data: Option<&RawValue>, limits: &Limits) -> Result<HistoryRequest, Rejected> {
    let raw = match data {
        None => RawHistory {
            limit: None,
            before_seq: None,
        },
        Some(d) => serde_json::from_str::<RawHistory>(d.get()).map_err(|_| {
            Rejected::new(
                ErrorCode::InvalidParameter,
                "history data.limit and data.before_seq must be non-negative integers",
                None,
            )
        })?,
    };
    if raw.limit == Some(0) || raw.limit.is_some_and(|l| l > limits.max_history_limit) {
        return Err(Rejected::new(
            ErrorCode::InvalidParameter,
            format!("limit must be between 1 and {}", limits.max_history_limit),
            None,
        ));
    }
    Ok(HistoryRequest {
        limit: raw.limit,
        before_seq: raw.before_seq,
    })
}

#[derive(Serialize)]
struct Frame<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: T,
}

fn frame<T: Serialize>(kind: &str, data: T) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
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

/// `{"type":"message","data":<record>}` where `record` is the stored JSON object.
pub fn message_frame(record_json: &str) -> String {
    let mut out = String::with_capacity(record_json.len() + 30);
    out.push_str(r#"{"type":"message","data":"#);
    out.push_str(record_json);
    out.push('}');
    out
}

/// Metadata of a history frame beyond the records themselves.
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

/// `{"type":"history","data":{"room":..,"messages":[<records>],..meta}}`,
/// records oldest first, embedded verbatim.
pub fn history_frame<'a>(meta: &HistoryMeta, records: impl IntoIterator<Item = &'a str>) -> String {
    let meta_json = serde_json::to_string(meta).unwrap_or_else(|_| "{}".to_owned());
    let mut out = String::with_capacity(256);
    out.push_str(r#"{"type":"history","data":{"messages":["#);
    for (i, r) in records.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r);
    }
    out.push_str("],");
    // meta_json is `{...}`: splice its fields after `messages`.
    out.push_str(&meta_json[1..]);
    out.push('}');
    out
}

/// The stored history record: the spec's server→client `data` object plus `seq`.
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

    fn limits() -> Limits {
        Limits {
            max_message_chars: 10,
            max_history_limit: 100,
        }
    }

    fn parse(text: &str) -> Result<ClientFrame, Rejected> {
        parse_client_frame(text, &RoomId::parse("lobby").unwrap(), &limits())
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).unwrap_err().error.code
    }

    #[test]
    fn valid_message_with_unknown_fields() {
        let f = parse(r#"{"type":"message","extra":1,"data":{"room":"lobby","message":"hi","username":"ana","client_id":"c1","x":[1]}}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Message(OutgoingMessage {
                message: "hi".into(),
                username: Some(Username::parse("ana").unwrap()),
                client_id: Some("c1".into()),
            })
        );
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("not json"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"data":{}}"#), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"nope","data":{}}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"message"}"#), ErrorCode::BadFrame);
        assert_eq!(
            code(r#"{"type":"message","data":{"room":1}}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"message":"x"}}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"room":"a b","message":"x"}}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"room":"other","message":"x"}}"#),
            ErrorCode::RoomMismatch
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"room":"lobby","message":""}}"#),
            ErrorCode::EmptyMessage
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"room":"lobby"}}"#),
            ErrorCode::EmptyMessage
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"room":"lobby","message":"01234567890"}}"#),
            ErrorCode::MessageTooLong
        );
        assert!(
            parse(r#"{"type":"message","data":{"room":"lobby","message":"éééééééééé"}}"#).is_ok()
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"room":"lobby","message":"x","username":""}}"#),
            ErrorCode::InvalidUsername
        );
        assert_eq!(
            code(r#"{"type":"history","data":{"limit":0}}"#),
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            code(r#"{"type":"history","data":{"limit":-1}}"#),
            ErrorCode::InvalidParameter
        );
    }

    #[test]
    fn rejection_echoes_client_id() {
        let r = parse(r#"{"type":"message","data":{"room":"x","message":"hi","client_id":"n1"}}"#)
            .unwrap_err();
        assert_eq!(r.client_id.as_deref(), Some("n1"));
        let frame: serde_json::Value =
            serde_json::from_str(&error_frame(&r.error, r.client_id.as_deref())).unwrap();
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["data"]["code"], "room_mismatch");
        assert_eq!(frame["data"]["client_id"], "n1");
    }

    #[test]
    fn frames_are_valid_json() {
        let rec = r#"{"id":"i","room":"r","message":"m","username":"u","timestamp":"t","seq":3}"#;
        let m: serde_json::Value = serde_json::from_str(&message_frame(rec)).unwrap();
        assert_eq!(m["data"]["seq"], 3);
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
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
