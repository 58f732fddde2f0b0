//! Server-side publish: `POST /rooms/{room}/messages` with an API key.
//!
//! Bots and application backends post through the same append as WebSocket
//! clients, so their messages get the same order, `seq`, deduplication by
//! `client_id` and back-pressure. Keys
//! ([`crate::edge::api_keys`]) come from `API_KEYS` and `API_KEYS_FILE`;
//! the route also takes a user token or an anonymous session
//! ([`crate::http::send`], which hands API keys to this module), and
//! answers 401 without any credential. A message posted with a key carries
//! `user_id` `api:<name>`, so its author is known and no token can claim it
//! (tokens with an `api:` sub are refused). Each key has its own rate limit.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chat_shared::ids::{Username, MAX_CLIENT_ID_CHARS};
use chat_shared::metrics as m;
use chat_shared::protocol::ErrorCode;
use serde::Deserialize;

use crate::delivery::append::{self, Draft};
use crate::edge::api_keys::bearer;
use crate::http::error::{parse_room, ApiError};
use crate::rooms::events as room_events;
use crate::state::AppState;

/// The request body.
#[derive(Debug, Deserialize)]
struct PublishBody {
    message: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
}

fn bad(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// The display name of messages posted without a `username`.
pub const DEFAULT_API_USERNAME: &str = "api";

/// `POST /rooms/{room}/messages`: 201 `{"id","timestamp","client_id"}` once
/// the message is durable.
pub(crate) async fn publish(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Some(keys) = &state.api_keys else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such route",
        ));
    };
    let presented = bearer(&headers).unwrap_or_default();
    let Some(key) = keys.find(presented) else {
        metrics::counter!(m::GW_API_REQUESTS, "result" => "unauthorized").increment(1);
        tracing::info!("Publish refused: missing or wrong API key");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "Authorization: Bearer <API key> is missing or wrong",
        ));
    };
    if !keys.spend(key.index) {
        metrics::counter!(m::GW_API_REQUESTS, "result" => "rate_limited").increment(1);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "this API key sends faster than API_RATE_LIMIT_PER_SEC allows",
        ));
    }
    let room = parse_room(&room)?;
    let body: PublishBody = serde_json::from_slice(&body).map_err(|_| {
        bad(
            ErrorCode::BadJson,
            "body must be a JSON object with a string \"message\"",
        )
    })?;
    let message = body.message.unwrap_or_default();
    if message.is_empty() {
        return Err(bad(ErrorCode::EmptyMessage, "message must not be empty"));
    }
    let max = state.limits.max_message_chars;
    if message.chars().count() > max {
        return Err(bad(
            ErrorCode::MessageTooLong,
            format!("message is longer than {max} characters"),
        ));
    }
    let username = Username::parse(body.username.as_deref().unwrap_or(DEFAULT_API_USERNAME))
        .map_err(|_| {
            bad(
                ErrorCode::InvalidUsername,
                "username must be 1-64 characters without control characters",
            )
        })?;
    if body
        .client_id
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_CLIENT_ID_CHARS)
    {
        return Err(bad(
            ErrorCode::InvalidClientId,
            format!("client_id is longer than {MAX_CLIENT_ID_CHARS} characters"),
        ));
    }
    if let Some(reply_to) = &body.reply_to {
        let exists = room_events::exists(&state.redis, &room, reply_to).await;
        if let Err(e) = exists {
            metrics::counter!(m::GW_API_REQUESTS, "result" => e.code.as_str()).increment(1);
            let status = match e.code {
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return Err(ApiError::new(status, e.code, e.message));
        }
    }
    let draft = Draft {
        reply_to: body.reply_to,
        ..Draft::message(
            username,
            Some(key.user_id()),
            body.client_id.clone(),
            message,
        )
    };
    let limits = state.config.append_limits();
    let hook = state.publish_hook.as_ref();
    let appended = append::append(&state.redis, limits, hook, &room, draft)
        .await
        .map_err(|e| {
            metrics::counter!(m::GW_API_REQUESTS, "result" => e.code().as_str()).increment(1);
            let status = match e.code() {
                ErrorCode::Rejected => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            ApiError::new(status, e.code(), e.client_message())
        })?;
    metrics::counter!(m::GW_API_REQUESTS, "result" => "accepted").increment(1);
    let body = serde_json::json!({
        "id": appended.id,
        "timestamp": appended.timestamp,
        "client_id": body.client_id,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
