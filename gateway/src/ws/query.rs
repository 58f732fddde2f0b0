//! The `/ws` query: `room`, `username`, `since` and `epoch`, validated
//! before the upgrade. A pure function of the decoded parameters, so it can
//! be tested (and fuzzed) without a socket.

use std::collections::HashMap;

use axum::http::StatusCode;
use chat_shared::ids::{RoomId, Username};
use chat_shared::protocol::ErrorCode;

use super::Resume;

/// What a valid `/ws` query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsQuery {
    /// The room to join.
    pub(crate) room: RoomId,
    /// The display name (default: `anonymous`).
    pub(crate) username: Username,
    /// Where the history starts, when `since` is given.
    pub(crate) resume: Option<Resume>,
}

/// Why a query is refused: HTTP status, error code and message, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryRejection {
    /// Always 400 here.
    pub(crate) status: StatusCode,
    /// `invalid_room`, `invalid_username` or `invalid_parameter`.
    pub(crate) code: ErrorCode,
    /// The message for the client.
    pub(crate) message: &'static str,
}

impl QueryRejection {
    fn new(code: ErrorCode, message: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message,
        }
    }
}

/// Validates the decoded query parameters of `/ws`.
///
/// # Errors
/// A bad or missing `room`, a bad `username`, or a `since` that is not a
/// non-negative integer. `epoch` is opaque and only used with `since`.
pub(crate) fn parse(params: &HashMap<String, String>) -> Result<WsQuery, QueryRejection> {
    let Some(room) = params.get("room").and_then(|r| RoomId::parse(r).ok()) else {
        return Err(QueryRejection::new(
            ErrorCode::InvalidRoom,
            "query parameter room is required: 1-64 characters of [A-Za-z0-9_.:-]",
        ));
    };
    let username = match params.get("username") {
        None => Username::default(),
        Some(u) => Username::parse(u).map_err(|_| {
            QueryRejection::new(
                ErrorCode::InvalidUsername,
                "username must be 1-64 characters without control characters",
            )
        })?,
    };
    let resume = match params.get("since") {
        None => None,
        Some(raw) => Some(Resume {
            since: raw.parse::<u64>().map_err(|_| {
                QueryRejection::new(
                    ErrorCode::InvalidParameter,
                    "since must be a non-negative integer",
                )
            })?,
            epoch: params.get("epoch").cloned(),
        }),
    };
    Ok(WsQuery {
        room,
        username,
        resume,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn valid_and_invalid_queries() {
        let q = parse(&query(&[
            ("room", "lobby"),
            ("since", "7"),
            ("epoch", "e1"),
        ]))
        .unwrap();
        assert_eq!(q.room.as_str(), "lobby");
        assert_eq!(
            q.resume,
            Some(Resume {
                since: 7,
                epoch: Some("e1".into())
            })
        );
        assert_eq!(parse(&query(&[])).unwrap_err().code, ErrorCode::InvalidRoom);
        let bad_user = parse(&query(&[("room", "r"), ("username", "")])).unwrap_err();
        assert_eq!(bad_user.code, ErrorCode::InvalidUsername);
        let bad_since = parse(&query(&[("room", "r"), ("since", "-1")])).unwrap_err();
        assert_eq!(bad_since.code, ErrorCode::InvalidParameter);
        // `epoch` without `since` is ignored.
        let q = parse(&query(&[("room", "r"), ("epoch", "x")])).unwrap();
        assert_eq!(q.resume, None);
    }

    /// Keys the parser knows (and `token`, which it will), plus noise.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("room".to_owned()),
            Just("username".to_owned()),
            Just("since".to_owned()),
            Just("epoch".to_owned()),
            Just("token".to_owned()),
            any::<String>(),
        ]
    }

    /// Values: arbitrary strings, plus shapes close to valid ones.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_.:-]{0,70}",
            "-?[0-9]{0,25}",
            "[ \\t\\x00-\\x1f\\x7f]{0,3}[a-z]{0,3}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Decoded parameters: never a panic; an answer is either a query
        /// whose parts re-validate, or a documented 400.
        #[test]
        fn any_parameters_give_a_query_or_a_documented_400(
            params in proptest::collection::hash_map(key(), value(), 0..6)
        ) {
            match parse(&params) {
                Ok(q) => {
                    prop_assert_eq!(Some(q.room.as_str()), params.get("room").map(String::as_str));
                    if let Some(u) = params.get("username") {
                        prop_assert_eq!(q.username.as_str(), u.as_str());
                    }
                    prop_assert_eq!(q.resume.is_some(), params.contains_key("since"));
                }
                Err(r) => {
                    prop_assert_eq!(r.status, StatusCode::BAD_REQUEST);
                    prop_assert!(matches!(
                        r.code,
                        ErrorCode::InvalidRoom | ErrorCode::InvalidUsername | ErrorCode::InvalidParameter
                    ));
                }
            }
        }

        /// Raw query strings (any bytes, percent-encoded as a client would
        /// send them) through axum's decoder and the parser: never a panic.
        #[test]
        fn any_raw_query_string_is_handled(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut encoded = String::with_capacity(raw.len() * 3);
            for b in &raw {
                // Keep `=` and `&` so pairs form; encode everything else
                // that is not a plain URI character.
                if b.is_ascii_alphanumeric() || b"=&-._~".contains(b) {
                    encoded.push(char::from(*b));
                } else {
                    encoded.push_str(&format!("%{b:02X}"));
                }
            }
            let uri: axum::http::Uri = format!("/ws?{encoded}").parse().expect("encoded URI parses");
            let axum::extract::Query(params) =
                axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
                    .expect("a map of strings always decodes");
            let _ = parse(&params);
        }
    }
}
