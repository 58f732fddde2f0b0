//! The body the hook receives: one message or edit, as the sender wrote it.

use chat_shared::protocol::Attachment;
use serde::Serialize;

/// What is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A new message.
    Message,
    /// The new text of an earlier message (`id` names it).
    Edit,
}

/// One message or edit, as the hook's JSON body: every field is present,
/// `null` when it does not apply, so a hook can read them without guessing.
#[derive(Debug, Clone, Serialize)]
pub struct Subject<'a> {
    /// `message` or `edit`.
    pub kind: Kind,
    /// The room it is posted to.
    pub room: &'a str,
    /// The sender's user id (token `sub`, `anon-…`, or `api:<name>`).
    pub user_id: Option<&'a str>,
    /// The sender's display name.
    pub username: &'a str,
    /// The text (an edit's new text).
    pub message: &'a str,
    /// The client's nonce, if it sent one.
    pub client_id: Option<&'a str>,
    /// The message answered, if any.
    pub reply_to: Option<&'a str>,
    /// The message's attachments (empty for an edit).
    pub attachments: &'a [Attachment],
    /// An edit's target message; `null` for a message.
    pub id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_present() {
        let s = Subject {
            kind: Kind::Edit,
            room: "r",
            user_id: Some("u1"),
            username: "ann",
            message: "new text",
            client_id: None,
            reply_to: None,
            attachments: &[],
            id: Some("0190-target"),
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "kind": "edit", "room": "r", "user_id": "u1", "username": "ann",
                "message": "new text", "client_id": null, "reply_to": null,
                "attachments": [], "id": "0190-target"
            })
        );
    }
}
