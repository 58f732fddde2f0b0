//! Who sends over HTTP: one extractor for `POST /rooms/{room}/messages` and
//! `/events`. An API key (`Authorization: Bearer`), a user token
//! (`Authorization: Bearer` or `?token=`, authentication on) or an anonymous
//! session (`?session=`, authentication off, as issued in the `session`
//! frame); anything else is 401 `unauthorized`.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use chat_shared::protocol::ErrorCode;

use crate::edge::api_keys::bearer;
use crate::edge::auth::{AuthError, Identity};
use crate::http::error::ApiError;
use crate::state::AppState;

/// The sender of an HTTP message or event.
#[derive(Debug)]
pub(crate) enum SenderIdentity {
    /// A configured API key: its position and its `api:<name>` user id.
    ApiKey {
        /// Position among the configured keys (its budget).
        index: usize,
        /// `api:<name>`.
        user_id: String,
    },
    /// A verified user token.
    User(Identity),
    /// An anonymous session's `anon-…` id.
    Anon(String),
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
}

impl FromRequestParts<AppState> for SenderIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let query: HashMap<String, String> = Query::try_from_uri(&parts.uri)
            .map(|Query(q)| q)
            .unwrap_or_default();
        let presented = bearer(&parts.headers);
        if let (Some(keys), Some(p)) = (&state.api_keys, presented) {
            if let Some(key) = keys.find(p) {
                return Ok(Self::ApiKey {
                    index: key.index,
                    user_id: key.user_id(),
                });
            }
        }
        if let Some(auth) = &state.auth {
            let token = query.get("token").map(String::as_str).or(presented);
            let identity = match token {
                None => Err(AuthError::Missing),
                Some(t) => auth.verify_async(t).await,
            };
            return identity
                .map(Self::User)
                .map_err(|e| unauthorized(e.to_string()));
        }
        let (Some(sessions), Some(session)) = (&state.sessions, query.get("session")) else {
            return Err(unauthorized(
                "send with Authorization: Bearer <API key>, or ?session= (the session frame's value)",
            ));
        };
        match sessions.check(&state.redis, session).await {
            Ok(Some(user_id)) => Ok(Self::Anon(user_id)),
            Ok(None) => Err(unauthorized(
                "the session is not valid; reconnect to get one",
            )),
            Err(_) => Err(ApiError::unavailable("the session check")),
        }
    }
}
