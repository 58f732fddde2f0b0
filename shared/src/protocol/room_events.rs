//! The ordered room events a client may send: `edit`, `delete` and `react`,
//! and the optional parts of a message: `reply_to` and `attachments`.
//!
//! Like messages, room events are appended to the room's stream, get their
//! own `seq` and are acked; this module only parses and validates them.
//! Whether the target message exists and who may change it is decided by
//! the gateway against Redis.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::checks::{check_client_id, check_room, check_text, Rejected};
use super::{ErrorCode, Limits};
use crate::model::ids::RoomId;

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;
/// Longest attachment URL, in bytes.
pub const MAX_ATTACHMENT_URL_BYTES: usize = 2048;
/// Longest attachment name, in characters.
pub const MAX_ATTACHMENT_NAME_CHARS: usize = 256;
/// Longest attachment MIME type, in bytes.
pub const MAX_ATTACHMENT_MIME_BYTES: usize = 128;
/// Largest attachment `size` accepted: 2^53 − 1, the largest integer a
/// JavaScript number (and any IEEE double) holds exactly.
pub const MAX_ATTACHMENT_SIZE: u64 = (1 << 53) - 1;
/// Longest reaction emoji, in characters.
pub const MAX_EMOJI_CHARS: usize = 32;
/// Longest message id accepted as a target (ids are UUIDs: 36).
const MAX_TARGET_ID_BYTES: usize = 64;

/// A link to a file the application stores; the chat only carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// An `https://` URL.
    pub url: String,
    /// The file name shown to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The MIME type, `type/subtype`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Whether a reaction is added or taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReactOp {
    /// The user adds the emoji (once per user and emoji).
    Add,
    /// The user takes it back.
    Remove,
}

impl ReactOp {
    /// The wire label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
        }
    }
}

/// `{"type":"edit","data":{"room","id","message","client_id"}}`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditRequest {
    /// The message to edit.
    pub id: String,
    /// Its new text.
    pub message: String,
    /// The client's nonce, echoed in `ack` and `error`.
    pub client_id: Option<String>,
}

/// `{"type":"delete","data":{"room","id","client_id"}}`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteRequest {
    /// The message to delete.
    pub id: String,
    /// The client's nonce.
    pub client_id: Option<String>,
}

/// `{"type":"react","data":{"room","id","emoji","op","client_id"}}`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactRequest {
    /// The message reacted to.
    pub id: String,
    /// 1–32 characters, no control characters.
    pub emoji: String,
    /// Add or remove.
    pub op: ReactOp,
    /// The client's nonce.
    pub client_id: Option<String>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    emoji: Option<String>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

fn raw_event(data: Option<&RawValue>) -> Result<RawEvent, Rejected> {
    let data = data
        .ok_or_else(|| Rejected::new(ErrorCode::BadFrame, "\"data\" object is required", None))?;
    serde_json::from_str(data.get()).map_err(|_| {
        Rejected::new(
            ErrorCode::BadFrame,
            "\"data\" must be an object whose room, id, message, emoji, op and client_id are strings",
            None,
        )
    })
}

/// The common part of every room event: client id, room, target id.
fn head(raw: &mut RawEvent, room: &RoomId) -> Result<(String, Option<String>), Rejected> {
    let client_id = check_client_id(raw.client_id.take())?;
    check_room(raw.room.as_deref(), room, &client_id)?;
    let id = check_target(raw.id.take(), "data.id", &client_id)?;
    Ok((id, client_id))
}

/// Validates a message id named by a client (a target or a `reply_to`).
/// One that cannot be an id of ours is `not_found`, like a trimmed one.
pub(crate) fn check_target(
    id: Option<String>,
    field: &str,
    client_id: &Option<String>,
) -> Result<String, Rejected> {
    match id {
        None => Err(Rejected::new(
            ErrorCode::BadFrame,
            format!("{field} is required"),
            client_id.clone(),
        )),
        Some(id) if id.is_empty() || id.len() > MAX_TARGET_ID_BYTES || id.contains('"') => {
            Err(Rejected::new(
                ErrorCode::NotFound,
                format!("{field} names no message of this room"),
                client_id.clone(),
            ))
        }
        Some(id) => Ok(id),
    }
}

/// Parses an `edit` frame's data.
pub(crate) fn parse_edit(
    data: Option<&RawValue>,
    room: &RoomId,
    limits: &Limits,
) -> Result<EditRequest, Rejected> {
    let mut raw = raw_event(data)?;
    let (id, client_id) = head(&mut raw, room)?;
    let message = check_text(raw.message, limits, &client_id)?;
    Ok(EditRequest {
        id,
        message,
        client_id,
    })
}

/// Parses a `delete` frame's data.
pub(crate) fn parse_delete(
    data: Option<&RawValue>,
    room: &RoomId,
) -> Result<DeleteRequest, Rejected> {
    let mut raw = raw_event(data)?;
    let (id, client_id) = head(&mut raw, room)?;
    Ok(DeleteRequest { id, client_id })
}

/// Parses a `react` frame's data.
pub(crate) fn parse_react(
    data: Option<&RawValue>,
    room: &RoomId,
) -> Result<ReactRequest, Rejected> {
    let mut raw = raw_event(data)?;
    let (id, client_id) = head(&mut raw, room)?;
    let emoji = match raw.emoji {
        Some(e)
            if !e.is_empty()
                && e.chars().count() <= MAX_EMOJI_CHARS
                && !e.chars().any(char::is_control) =>
        {
            e
        }
        _ => {
            return Err(Rejected::new(
                ErrorCode::InvalidParameter,
                format!(
                    "data.emoji must be 1-{MAX_EMOJI_CHARS} characters without control characters"
                ),
                client_id,
            ))
        }
    };
    let op = match raw.op.as_deref() {
        Some("add") => ReactOp::Add,
        Some("remove") => ReactOp::Remove,
        _ => {
            return Err(Rejected::new(
                ErrorCode::InvalidParameter,
                "data.op must be \"add\" or \"remove\"",
                client_id,
            ))
        }
    };
    Ok(ReactRequest {
        id,
        emoji,
        op,
        client_id,
    })
}

/// Validates a message's attachments: at most [`MAX_ATTACHMENTS`], each with
/// an `https://` URL and, when given, a name, a `type/subtype` MIME type and
/// a size within bounds.
pub(crate) fn check_attachments(
    list: Vec<Attachment>,
    client_id: &Option<String>,
) -> Result<Vec<Attachment>, Rejected> {
    let bad = |msg: String| {
        Err(Rejected::new(
            ErrorCode::InvalidParameter,
            msg,
            client_id.clone(),
        ))
    };
    if list.len() > MAX_ATTACHMENTS {
        return bad(format!("at most {MAX_ATTACHMENTS} attachments per message"));
    }
    for a in &list {
        let url_ok = a.url.len() <= MAX_ATTACHMENT_URL_BYTES
            && a.url.len() > "https://".len()
            // `get`: byte 8 may fall inside a multi-byte character.
            && a.url.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("https://"))
            && !a.url.chars().any(|c| c.is_control() || c.is_whitespace());
        if !url_ok {
            return bad(format!(
                "attachment url must be an https:// URL of at most {MAX_ATTACHMENT_URL_BYTES} bytes"
            ));
        }
        if let Some(name) = &a.name {
            if name.is_empty()
                || name.chars().count() > MAX_ATTACHMENT_NAME_CHARS
                || name.chars().any(char::is_control)
            {
                return bad(format!(
                    "attachment name must be 1-{MAX_ATTACHMENT_NAME_CHARS} characters without control characters"
                ));
            }
        }
        if let Some(mime) = &a.mime {
            let ok = mime.len() <= MAX_ATTACHMENT_MIME_BYTES
                && mime.split_once('/').is_some_and(|(t, s)| {
                    let token = |p: &str| {
                        !p.is_empty()
                            && p.bytes()
                                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'"')
                    };
                    token(t) && token(s)
                });
            if !ok {
                return bad("attachment mime must look like type/subtype".into());
            }
        }
        if a.size.is_some_and(|s| s > MAX_ATTACHMENT_SIZE) {
            return bad(format!(
                "attachment size must be at most {MAX_ATTACHMENT_SIZE}"
            ));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_client_frame, ClientFrame};

    fn parse(text: &str) -> Result<ClientFrame, Rejected> {
        let limits = Limits {
            max_message_chars: 10,
            max_history_limit: 100,
        };
        parse_client_frame(text, &RoomId::parse("lobby").unwrap(), &limits)
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).unwrap_err().error.code
    }

    #[test]
    fn valid_events() {
        assert_eq!(
            parse(r#"{"type":"edit","data":{"room":"lobby","id":"m1","message":"new","client_id":"c"}}"#)
                .unwrap(),
            ClientFrame::Edit(EditRequest {
                id: "m1".into(),
                message: "new".into(),
                client_id: Some("c".into())
            })
        );
        assert_eq!(
            parse(r#"{"type":"delete","data":{"room":"lobby","id":"m1"}}"#).unwrap(),
            ClientFrame::Delete(DeleteRequest {
                id: "m1".into(),
                client_id: None
            })
        );
        assert_eq!(
            parse(
                r#"{"type":"react","data":{"room":"lobby","id":"m1","emoji":"👍","op":"remove"}}"#
            )
            .unwrap(),
            ClientFrame::React(ReactRequest {
                id: "m1".into(),
                emoji: "👍".into(),
                op: ReactOp::Remove,
                client_id: None
            })
        );
    }

    #[test]
    fn bad_events_get_their_codes_and_echo_client_id() {
        assert_eq!(code(r#"{"type":"edit"}"#), ErrorCode::BadFrame);
        assert_eq!(
            code(r#"{"type":"edit","data":{"room":"lobby","message":"x"}}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"type":"edit","data":{"room":"other","id":"m","message":"x"}}"#),
            ErrorCode::RoomMismatch
        );
        assert_eq!(
            code(r#"{"type":"edit","data":{"room":"lobby","id":"m","message":""}}"#),
            ErrorCode::EmptyMessage
        );
        assert_eq!(
            code(r#"{"type":"edit","data":{"room":"lobby","id":"m","message":"01234567890"}}"#),
            ErrorCode::MessageTooLong
        );
        assert_eq!(
            code(r#"{"type":"delete","data":{"room":"lobby","id":""}}"#),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(r#"{"type":"react","data":{"room":"lobby","id":"m","emoji":"","op":"add"}}"#),
            ErrorCode::InvalidParameter
        );
        let long = "x".repeat(33);
        assert_eq!(
            code(&format!(
                r#"{{"type":"react","data":{{"room":"lobby","id":"m","emoji":"{long}","op":"add"}}}}"#
            )),
            ErrorCode::InvalidParameter
        );
        let r = parse(r#"{"type":"react","data":{"room":"lobby","id":"m","emoji":"x","op":"toggle","client_id":"n"}}"#)
            .unwrap_err();
        assert_eq!(r.error.code, ErrorCode::InvalidParameter);
        assert_eq!(r.client_id.as_deref(), Some("n"));
    }

    #[test]
    fn message_parts_are_validated() {
        let ok = parse(r#"{"type":"message","data":{"room":"lobby","message":"hi","reply_to":"m1","attachments":[{"url":"https://x.io/a.png","name":"a.png","mime":"image/png","size":3}]}}"#).unwrap();
        let ClientFrame::Message(m) = ok else {
            panic!("not a message")
        };
        assert_eq!(m.reply_to.as_deref(), Some("m1"));
        assert_eq!(m.attachments.len(), 1);
        for bad in [
            r#"[{"url":"http://x.io/a"}]"#,
            r#"[{"url":"https://"}]"#,
            r#"[{"url":"https://x.io/a","mime":"png"}]"#,
            r#"[{"url":"https://x.io/a","name":""}]"#,
            r#"[{"url":"https://x.io/a","size":9007199254740992}]"#,
            // Byte 8 inside a two-byte character: refused, not a panic.
            r#"[{"url":"https:/éx.io/a"}]"#,
        ] {
            let text = format!(
                r#"{{"type":"message","data":{{"room":"lobby","message":"hi","attachments":{bad}}}}}"#
            );
            assert_eq!(code(&text), ErrorCode::InvalidParameter, "{bad}");
        }
        let eleven = [r#"{"url":"https://x.io/a"}"#; 11].join(",");
        assert_eq!(
            code(&format!(
                r#"{{"type":"message","data":{{"room":"lobby","message":"hi","attachments":[{eleven}]}}}}"#
            )),
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"room":"lobby","message":"hi","attachments":{}}}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"type":"message","data":{"room":"lobby","message":"hi","reply_to":""}}"#),
            ErrorCode::NotFound
        );
    }
}
