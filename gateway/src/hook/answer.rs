//! Reading the hook's answer: `{"action":"accept"}`,
//! `{"action":"reject","reason":..}` or `{"action":"modify","message":..}`.
//!
//! A modified text is checked like a client's message (not empty, at most
//! `MAX_MESSAGE_LEN` characters): the hook speaks for the application, but
//! what it returns is stored and delivered to every client, so it gets no
//! way around the limits they rely on. An answer that is not one of the
//! three, or a modification that fails the checks, is malformed: the
//! application has a bug, and the gateway treats it like a hook that did not
//! answer (`PUBLISH_HOOK_FAIL_OPEN` decides).

use chat_shared::protocol::{check_text, Limits};
use serde::Deserialize;

/// Longest rejection reason passed on to the sender, in characters; a
/// longer one is cut (it travels in an error frame, not a message).
pub const MAX_REASON_CHARS: usize = 1024;

/// The reason a sender gets when the hook rejects without giving one.
pub const DEFAULT_REASON: &str = "rejected by the application";

/// The answer as the hook sends it; other fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Wire {
    Accept,
    Reject {
        #[serde(default)]
        reason: Option<String>,
    },
    Modify {
        message: String,
    },
}

/// What the hook decided about one message or edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Store it as sent.
    Accept,
    /// Refuse it; the sender gets error `rejected` with this reason.
    Reject(String),
    /// Store and deliver this text instead (already checked).
    Modify(String),
}

/// The answer could not be used; the text says why, for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed hook answer: {0}")]
pub struct Malformed(pub String);

/// Parses an answer body and checks a modified text against `limits`.
///
/// # Errors
/// When the body is not one of the three answers, or the modified text is
/// empty or too long.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Answer, Malformed> {
    let wire: Wire = serde_json::from_slice(body).map_err(|e| Malformed(e.to_string()))?;
    Ok(match wire {
        Wire::Accept => Answer::Accept,
        Wire::Reject { reason } => {
            let reason = reason.filter(|r| !r.trim().is_empty());
            let reason = reason.map_or_else(|| DEFAULT_REASON.to_owned(), cut);
            Answer::Reject(reason)
        }
        Wire::Modify { message } => {
            let message = check_text(Some(message), limits, &None)
                .map_err(|r| Malformed(format!("modified message: {}", r.error.message)))?;
            Answer::Modify(message)
        }
    })
}

/// `reason` cut to [`MAX_REASON_CHARS`] characters.
fn cut(reason: String) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((end, _)) => reason[..end].to_owned(),
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_chars: 10,
        max_history_limit: 10,
    };

    fn parse(body: &str) -> Result<Answer, Malformed> {
        super::parse(body.as_bytes(), &LIMITS)
    }

    #[test]
    fn the_three_answers() {
        assert_eq!(parse(r#"{"action":"accept"}"#), Ok(Answer::Accept));
        assert_eq!(
            parse(r#"{"action":"accept","extra":1}"#),
            Ok(Answer::Accept),
            "other fields are ignored"
        );
        assert_eq!(
            parse(r#"{"action":"reject","reason":"no spam"}"#),
            Ok(Answer::Reject("no spam".into()))
        );
        assert_eq!(
            parse(r#"{"action":"modify","message":"h*llo"}"#),
            Ok(Answer::Modify("h*llo".into()))
        );
    }

    #[test]
    fn a_rejection_always_has_a_short_reason() {
        for body in [
            r#"{"action":"reject"}"#,
            r#"{"action":"reject","reason":" "}"#,
        ] {
            assert_eq!(parse(body), Ok(Answer::Reject(DEFAULT_REASON.into())));
        }
        let long = format!(r#"{{"action":"reject","reason":"{}"}}"#, "é".repeat(2000));
        let Ok(Answer::Reject(reason)) = parse(&long) else {
            panic!("not a rejection");
        };
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
    }

    #[test]
    fn a_modification_is_checked_like_a_clients_message() {
        assert!(parse(r#"{"action":"modify","message":""}"#).is_err());
        assert!(parse(r#"{"action":"modify","message":"eleven chars"}"#).is_err());
        assert!(parse(r#"{"action":"modify","message":"ten chars!"}"#).is_ok());
        assert!(parse(r#"{"action":"modify"}"#).is_err());
    }

    #[test]
    fn anything_else_is_malformed() {
        for body in [
            "",
            "accept",
            "{}",
            r#"{"action":"allow"}"#,
            r#"{"action":"ACCEPT"}"#,
            r#"{"action":"modify","message":5}"#,
            "[]",
        ] {
            assert!(parse(body).is_err(), "{body}");
        }
    }
}
