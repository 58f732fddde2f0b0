//! Room bans: `POST /rooms/{room}/bans` and `DELETE /rooms/{room}/bans/{user}`.
//!
//! A ban is a Redis key with a TTL (`keys::ban`), so it survives gateway
//! restarts and expires by itself. Placing one closes the user's open
//! connections in the room on every gateway (4003 `banned`): the gateways
//! with connections in the room each get a notice on their delivery channel.
//! Joins check the key before the upgrade (403 `banned`) and again right
//! after the connection is registered, so a join racing the ban is closed
//! too (either the notice finds it registered, or its check finds the key).
//!
//! The user is the user key: the token's `sub` with authentication, else the
//! display name. Callers authenticate with an API key (`API_KEYS`) or a token
//! with `role: "moderator"` that allows the room.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chat_shared::envelope::{BanNotice, DeliveryBatch};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::protocol::ErrorCode;
use chat_shared::redis::{RedisError, RedisHandle};
use serde::Deserialize;

use crate::edge::api_keys::bearer;
use crate::http::error::{parse_room, ApiError};
use crate::state::AppState;

/// Longest ban: one year.
pub const MAX_BAN_SECS: u64 = 365 * 24 * 3600;
/// Longest user key accepted, in bytes.
const MAX_USER_BYTES: usize = 256;

/// Whether bans can be placed at all: by API key or by a moderator token.
/// Without either, joins skip the ban check.
pub fn enabled(state: &AppState) -> bool {
    state.api_keys.is_some() || state.auth.is_some()
}

/// Whether `user` is banned from `room` right now.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn is_banned(redis: &RedisHandle, room: &RoomId, user: &str) -> Result<bool, RedisError> {
    redis
        .query(redis::cmd("EXISTS").arg(keys::ban(room, user)))
        .await
}

/// Who may place or lift bans: checked from `Authorization: Bearer`.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    room: &RoomId,
) -> Result<String, ApiError> {
    if !enabled(state) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such route",
        ));
    }
    let presented = bearer(headers).unwrap_or_default();
    if let Some(key) = state.api_keys.as_ref().and_then(|k| k.find(presented)) {
        return Ok(key.user_id());
    }
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "Authorization: Bearer <API key or moderator token> is missing or wrong",
        )
    };
    let auth = state.auth.as_ref().ok_or_else(unauthorized)?;
    let identity = auth
        .verify_async(presented)
        .await
        .map_err(|_| unauthorized())?;
    if !identity.moderator || !identity.may_join(room) {
        tracing::info!(user = identity.user_id, room = %room, "Ban refused: not a moderator of the room");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "only a moderator of this room may ban",
        ));
    }
    Ok(identity.user_id)
}

fn check_user(user: &str) -> Result<(), ApiError> {
    if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParameter,
            format!("user must be 1-{MAX_USER_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

fn unavailable(_: RedisError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        "Redis unreachable; retry",
    )
}

/// The body of `POST /rooms/{room}/bans`.
#[derive(Debug, Deserialize)]
struct BanBody {
    user: String,
    seconds: u64,
}

/// `POST /rooms/{room}/bans` `{"user","seconds"}` → 201
/// `{"room","user","seconds"}`; the user's connections in the room close.
pub(crate) async fn place(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let by = authorize(&state, &headers, &room).await?;
    let body: BanBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadJson,
            "body must be a JSON object with a string \"user\" and an integer \"seconds\"",
        )
    })?;
    check_user(&body.user)?;
    if !(1..=MAX_BAN_SECS).contains(&body.seconds) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParameter,
            format!("seconds must be between 1 and {MAX_BAN_SECS}"),
        ));
    }
    state
        .redis
        .query::<()>(
            redis::cmd("SET")
                .arg(keys::ban(&room, &body.user))
                .arg(&by)
                .arg("EX")
                .arg(body.seconds),
        )
        .await
        .map_err(unavailable)?;
    notify_gateways(&state.redis, &room, &body.user)
        .await
        .map_err(unavailable)?;
    metrics::counter!(m::GW_BANS, "op" => "placed").increment(1);
    tracing::info!(room = %room, user = body.user, seconds = body.seconds, by, "Ban placed");
    let answer =
        serde_json::json!({"room": room.as_str(), "user": body.user, "seconds": body.seconds});
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `DELETE /rooms/{room}/bans/{user}` → 200 `{"room","user","lifted"}`
/// (`lifted: false` when there was no ban).
pub(crate) async fn lift(
    State(state): State<AppState>,
    Path((room, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let by = authorize(&state, &headers, &room).await?;
    check_user(&user)?;
    let removed: u64 = state
        .redis
        .query(redis::cmd("DEL").arg(keys::ban(&room, &user)))
        .await
        .map_err(unavailable)?;
    metrics::counter!(m::GW_BANS, "op" => "lifted").increment(1);
    tracing::info!(room = %room, user, by, lifted = removed > 0, "Ban lifted");
    let answer = serde_json::json!({"room": room.as_str(), "user": user, "lifted": removed > 0});
    Ok(Json(answer).into_response())
}

/// Tells every gateway with connections in `room` to close `user`'s.
async fn notify_gateways(redis: &RedisHandle, room: &RoomId, user: &str) -> Result<(), RedisError> {
    let notice = DeliveryBatch {
        bans: vec![BanNotice {
            room: room.to_string(),
            user: user.to_owned(),
        }],
        ..DeliveryBatch::new(Vec::new(), chat_shared::envelope::now_us())
    };
    chat_shared::ephemeral::publish_to_room_gateways(redis, room, &notice)
        .await
        .map(|_| ())
}
