//! Room presence as clients see it: who is in a room (`GET
//! /rooms/{room}/presence`, the WS `presence` request) and the `join` /
//! `leave` announcements when a user's first connection opens or its last
//! one closes.
//!
//! The state lives in Redis beside the connection registry (see
//! [`crate::rooms::presence`] and [`chat_shared::presence`]); the registration
//! scripts report which users joined or left, and this module publishes the
//! announcements to the room's gateways when `PRESENCE_EVENTS` is on. They
//! are best-effort ([`chat_shared::ephemeral`]): the presence answer is the
//! state.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chat_shared::ephemeral::{self, PresenceKind};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::presence::Presence;
use chat_shared::redis::{RedisError, RedisHandle};

use crate::http::error::{parse_room, ApiError};
use crate::state::AppState;

/// Reads the room's presence: every connection's user, grouped by user key.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn snapshot(redis: &RedisHandle, room: &RoomId) -> Result<Presence, RedisError> {
    let records: Vec<String> = redis
        .query(redis::cmd("HVALS").arg(keys::presence_conns(room)))
        .await?;
    Ok(Presence::from_records(
        room.as_str(),
        records.iter().map(String::as_str),
    ))
}

/// Publishes `join` or `leave` for `users` (stored records) of `room`, when
/// `PRESENCE_EVENTS` is on. Failures are counted and logged, never returned:
/// the announcement is best-effort.
pub async fn announce(state: &AppState, room: &RoomId, kind: PresenceKind, users: &[String]) {
    announce_except(state, room, kind, users, None).await;
}

/// [`announce`], except to the connection `except_conn` (`<gateway>/<conn>`):
/// a joining connection is not told about its own join.
pub async fn announce_except(
    state: &AppState,
    room: &RoomId,
    kind: PresenceKind,
    users: &[String],
    except_conn: Option<&str>,
) {
    if !state.config.presence_events || users.is_empty() {
        return;
    }
    let mut events = ephemeral::presence_events(kind, room.as_str(), users);
    for e in &mut events {
        e.except_conn = except_conn.map(str::to_owned);
    }
    if let Err(e) = ephemeral::publish(&state.redis, room, events).await {
        let label = match kind {
            PresenceKind::Join => "join",
            PresenceKind::Leave => "leave",
        };
        metrics::counter!(m::GW_EPHEMERAL_PUBLISH_ERRORS, "kind" => label).increment(1);
        tracing::warn!(error = %e, kind = label, "Cannot publish a presence event");
    }
}

/// `GET /rooms/{room}/presence`: `{"room","count","users":[{"username","user_id","connections"}]}`.
pub async fn http_presence(
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let presence = snapshot(&state.redis, &room)
        .await
        .map_err(|_| ApiError::unavailable("presence"))?;
    Ok(([("content-type", "application/json")], presence.to_json()).into_response())
}
