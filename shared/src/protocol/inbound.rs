//! Client → server frames: parsing and validation.
//!
//! Unknown fields are ignored (forward compatibility); every refusal carries
//! a code from the closed set and, when it could be read, the frame's
//! `client_id`.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::checks::{check_client_id, check_room, check_text, Rejected};
use super::room_events::{
    check_attachments, check_target, parse_delete, parse_edit, parse_react, Attachment,
    DeleteRequest, EditRequest, ReactRequest,
};
use super::{room_inbound, ErrorCode, Limits};
use crate::model::ids::{RoomId, Username};

/// A validated client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"message",..}`: post a chat message to the connection's room.
    Message(InboundMessage),
    /// `{"type":"history","data":{"limit":N,"before_seq":S}}`: ask for a page.
    History(HistoryRequest),
    /// `{"type":"refresh","data":{"token":T}}`: replace the connection's token.
    Refresh(String),
    /// `{"type":"presence"}`: ask who is in the room.
    Presence,
    /// `{"type":"typing","data":{"active":B}}`: the sender is (not) typing.
    Typing(bool),
    /// `{"type":"read","data":{"seq":N}}`: the sender has read up to `seq`.
    Read(u64),
    /// `{"type":"edit",..}`: change the text of a message.
    Edit(EditRequest),
    /// `{"type":"delete",..}`: delete a message.
    Delete(DeleteRequest),
    /// `{"type":"react",..}`: add or remove a reaction to a message.
    React(ReactRequest),
}

/// A chat message as the client sent it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The message text, 1..=`max_message_chars` characters.
    pub message: String,
    /// The sender's display name: from the frame, else the connection's.
    pub username: Option<Username>,
    /// The client's nonce, echoed in `ack` and `error`.
    pub client_id: Option<String>,
    /// The id of the message of the same room this one answers.
    pub reply_to: Option<String>,
    /// Links to files (at most [`super::room_events::MAX_ATTACHMENTS`]).
    pub attachments: Vec<Attachment>,
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
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
struct RawHistory {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before_seq: Option<u64>,
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
        "refresh" => parse_refresh(raw.data).map(ClientFrame::Refresh),
        "presence" => Ok(ClientFrame::Presence),
        "typing" => room_inbound::parse_typing(raw.data).map(ClientFrame::Typing),
        "read" => room_inbound::parse_read(raw.data).map(ClientFrame::Read),
        "edit" => parse_edit(raw.data, room, limits).map(ClientFrame::Edit),
        "delete" => parse_delete(raw.data, room).map(ClientFrame::Delete),
        "react" => parse_react(raw.data, room).map(ClientFrame::React),
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(Rejected::new(
                ErrorCode::UnknownType,
                format!("unknown frame type {shown:?}; see the protocol section of the README"),
                None,
            ))
        }
    }
}

fn parse_message(
    data: Option<&RawValue>,
    room: &RoomId,
    limits: &Limits,
) -> Result<InboundMessage, Rejected> {
    let data = data
        .ok_or_else(|| Rejected::new(ErrorCode::BadFrame, "\"data\" object is required", None))?;
    let raw: RawMessage = serde_json::from_str(data.get()).map_err(|_| {
        Rejected::new(
            ErrorCode::BadFrame,
            "\"data\" must be an object whose room, message, username, client_id and reply_to are strings and attachments a list of objects",
            None,
        )
    })?;
    let client_id = check_client_id(raw.client_id)?;
    check_room(raw.room.as_deref(), room, &client_id)?;
    let message = check_text(raw.message, limits, &client_id)?;
    let username = match raw.username {
        None => None,
        Some(u) => match Username::parse(&u) {
            Ok(u) => Some(u),
            Err(_) => {
                return Err(Rejected::new(
                    ErrorCode::InvalidUsername,
                    "data.username must be 1-64 characters without control characters",
                    client_id,
                ))
            }
        },
    };
    let reply_to = match raw.reply_to {
        None => None,
        Some(id) => Some(check_target(Some(id), "data.reply_to", &client_id)?),
    };
    let attachments = check_attachments(raw.attachments.unwrap_or_default(), &client_id)?;
    Ok(InboundMessage {
        message,
        username,
        client_id,
        reply_to,
        attachments,
    })
}

fn parse_refresh(data: Option<&RawValue>) -> Result<String, Rejected> {
    #[derive(Deserialize)]
    struct RawRefresh {
        token: String,
    }
    data.and_then(|d| serde_json::from_str::<RawRefresh>(d.get()).ok())
        .map(|r| r.token)
        .filter(|t| !t.is_empty() && t.len() <= 8192)
        .ok_or_else(|| {
            Rejected::new(
                ErrorCode::BadFrame,
                "refresh needs data.token: a non-empty string of at most 8192 bytes",
                None,
            )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error_frame;

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
            ClientFrame::Message(InboundMessage {
                message: "hi".into(),
                username: Some(Username::parse("ana").unwrap()),
                client_id: Some("c1".into()),
                reply_to: None,
                attachments: Vec::new(),
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
    fn room_feature_frames() {
        assert_eq!(
            parse(r#"{"type":"presence"}"#).unwrap(),
            ClientFrame::Presence
        );
        assert_eq!(
            parse(r#"{"type":"typing","data":{"active":false}}"#).unwrap(),
            ClientFrame::Typing(false)
        );
        assert_eq!(
            parse(r#"{"type":"read","data":{"seq":0,"x":1}}"#).unwrap(),
            ClientFrame::Read(0)
        );
        for bad in [
            r#"{"type":"typing"}"#,
            r#"{"type":"typing","data":{}}"#,
            r#"{"type":"typing","data":{"active":"yes"}}"#,
            r#"{"type":"typing","data":{"active":1}}"#,
            r#"{"type":"read","data":[1]}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::BadFrame, "{bad}");
        }
        for bad in [
            r#"{"type":"read"}"#,
            r#"{"type":"read","data":{}}"#,
            r#"{"type":"read","data":{"seq":-1}}"#,
            r#"{"type":"read","data":{"seq":1.5}}"#,
            r#"{"type":"read","data":{"seq":"3"}}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::InvalidParameter, "{bad}");
        }
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
}
