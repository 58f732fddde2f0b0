//! Sending without a WebSocket, for clients on `/sse` (or none):
//!
//! - `POST /rooms/{room}/messages` with a user token or an anonymous
//!   session posts as that user (an API key keeps the publish API's path,
//!   [`crate::http::publish`]) → 201 `{"id","timestamp","client_id"}`.
//! - `POST /rooms/{room}/events` takes one client frame
//!   (`{"type":..,"data":..}`) → 200 with the frame `/ws` answers with, 204
//!   when it answers nothing (`typing`, `read`), or the `error` frame with
//!   the status of its code ([`status_of`]).
//!
//! Both run the frame through the WebSocket reader's own handlers
//! (`Reader::answer_once`), so validation, budgets (`USER_RATE_LIMIT_PER_SEC`,
//! room creation), authorship checks, `client_id` deduplication and the
//! append path are the same code. The room access middleware has already
//! checked tokens against the room and bans; a session's ban is checked here.

mod identity;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chat_shared::ids::{RoomId, Username};
use chat_shared::protocol::ErrorCode;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub(crate) use identity::SenderIdentity;

use crate::edge::listener::Peer;
use crate::http::error::{parse_room, ApiError};
use crate::http::publish::DEFAULT_API_USERNAME;
use crate::state::AppState;
use crate::ws::reader::{OneShot, Reader};

/// The HTTP status of an `error` frame's code.
pub(crate) fn status_of(code: &str) -> StatusCode {
    match code {
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" | "banned" | "forbidden_origin" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "rejected" => StatusCode::UNPROCESSABLE_ENTITY,
        "rate_limited" | "too_many_connections" => StatusCode::TOO_MANY_REQUESTS,
        "unavailable" | "overloaded" | "internal" => StatusCode::SERVICE_UNAVAILABLE,
        // Every other code is about the input.
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The `code` of an `error` frame; `None` for any other frame.
fn error_code(frame: &Value) -> Option<&str> {
    (frame.get("type")?.as_str()? == "error").then(|| frame.get("data")?.get("code")?.as_str())?
}

fn bad(code: ErrorCode, message: &str) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).into_response()
}

/// Runs `frame` as `sender`; the frames `/ws` would send back.
async fn run_frame(
    state: &AppState,
    room: RoomId,
    sender: SenderIdentity,
    client_ip: std::net::IpAddr,
    username: Option<&String>,
    frame: &Value,
) -> Result<Vec<Value>, Response> {
    let display = username
        .and_then(|u| Username::parse(u).ok())
        .unwrap_or_default();
    let (identity, user_id, username) = match sender {
        SenderIdentity::User(identity) => (Some(identity), None, display),
        SenderIdentity::Anon(user_id) => {
            if crate::rooms::bans::enabled(state) {
                match crate::rooms::bans::is_banned(&state.redis, &room, &user_id).await {
                    Ok(false) => {}
                    Ok(true) => {
                        return Err(ApiError::new(
                            StatusCode::FORBIDDEN,
                            ErrorCode::Banned,
                            "you are banned from this room",
                        )
                        .into_response())
                    }
                    Err(_) => return Err(ApiError::unavailable("the ban check").into_response()),
                }
            }
            (None, Some(user_id), display)
        }
        SenderIdentity::ApiKey { index, user_id } => {
            let spent = state.api_keys.as_ref().is_some_and(|k| k.spend(index));
            if !spent {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RateLimited,
                    "this API key sends faster than API_RATE_LIMIT_PER_SEC allows",
                )
                .into_response());
            }
            let name = username.map_or(DEFAULT_API_USERNAME, String::as_str);
            let name = Username::parse(name).unwrap_or_default();
            (None, Some(user_id), name)
        }
    };
    let who = OneShot {
        room,
        username,
        identity,
        user_id,
        client_ip,
    };
    let replies = Reader::answer_once(state.clone(), who, &frame.to_string()).await;
    Ok(replies
        .iter()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect())
}

/// The body as a JSON object with `room` set to the path's room when
/// absent (a different one is the reader's `room_mismatch`).
fn with_room(data: Option<Value>, room: &RoomId) -> Option<Map<String, Value>> {
    let mut data = match data {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o,
        Some(_) => return None,
    };
    data.entry("room")
        .or_insert_with(|| Value::String(room.as_str().to_owned()));
    Some(data)
}

/// Common request parts of both routes.
struct Request {
    state: AppState,
    room: RoomId,
    client_ip: std::net::IpAddr,
    query: HashMap<String, String>,
}

impl Request {
    fn new(
        state: AppState,
        room: &str,
        peer: &Peer,
        headers: &HeaderMap,
        query: HashMap<String, String>,
    ) -> Result<Self, ApiError> {
        let room = parse_room(room)?;
        let client_ip = state.access.client_ip_of(peer.addr.ip(), headers);
        Ok(Self {
            state,
            room,
            client_ip,
            query,
        })
    }

    /// Runs `frame` as `sender` through the reader's handlers, with the
    /// display name of `?username=`.
    async fn run(self, sender: SenderIdentity, frame: &Value) -> Result<Vec<Value>, Response> {
        let username = self.query.get("username");
        run_frame(
            &self.state,
            self.room,
            sender,
            self.client_ip,
            username,
            frame,
        )
        .await
    }
}

/// `POST /rooms/{room}/messages`: an API key publishes as before; a token
/// or session posts as its user through the reader.
pub(crate) async fn post_message(
    State(state): State<AppState>,
    Path(room): Path<String>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    sender: SenderIdentity,
    body: Bytes,
) -> Response {
    if let SenderIdentity::ApiKey { .. } = sender {
        return crate::http::publish::publish(State(state), Path(room), headers, body)
            .await
            .into_response();
    }
    let req = match Request::new(state, &room, &peer, &headers, query) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Ok(Value::Object(mut data)) = serde_json::from_slice::<Value>(&body) else {
        return bad(
            ErrorCode::BadJson,
            "body must be a JSON object with a string \"message\"",
        );
    };
    data.entry("room")
        .or_insert_with(|| Value::String(req.room.as_str().to_owned()));
    let frame = json!({"type": "message", "data": data});
    let replies = match req.run(sender, &frame).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(first) = replies.into_iter().next() else {
        return ApiError::unavailable("the append").into_response();
    };
    if let Some(code) = error_code(&first) {
        let status = status_of(code);
        return (status, Json(json!({"error": first["data"]}))).into_response();
    }
    let ack = &first["data"];
    let body = json!({
        "id": ack["id"],
        "timestamp": ack["timestamp"],
        "client_id": ack["client_id"],
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

/// The client frames `/events` takes (DESIGN.md); `message` too (the same
/// as `/messages`). `refresh` has no meaning without a connection.
const EVENT_TYPES: &[&str] = &[
    "typing", "read", "edit", "delete", "react", "presence", "history", "message",
];

/// `POST /rooms/{room}/events`: one client frame, answered as `/ws` would.
pub(crate) async fn post_event(
    State(state): State<AppState>,
    Path(room): Path<String>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    sender: SenderIdentity,
    body: Bytes,
) -> Response {
    let req = match Request::new(state, &room, &peer, &headers, query) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let error = |code: ErrorCode, message: &str| {
        let frame = chat_shared::protocol::error_frame(
            &chat_shared::protocol::ProtocolError::new(code, message),
            None,
        );
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            frame,
        )
            .into_response()
    };
    let Ok(Value::Object(mut frame)) = serde_json::from_slice::<Value>(&body) else {
        return error(
            ErrorCode::BadJson,
            "body must be one client frame: {\"type\":..,\"data\":{..}}",
        );
    };
    let kind = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !EVENT_TYPES.contains(&kind) {
        return error(
            ErrorCode::UnknownType,
            "type must be one of typing, read, edit, delete, react, presence, history, message",
        );
    }
    let Some(data) = with_room(frame.remove("data"), &req.room) else {
        return error(ErrorCode::BadJson, "data must be a JSON object");
    };
    frame.insert("data".into(), Value::Object(data));
    let frame = Value::Object(frame);
    let replies = match req.run(sender, &frame).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(answer) = merge_history(replies) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    let status = error_code(&answer).map_or(StatusCode::OK, status_of);
    (status, Json(answer)).into_response()
}

/// The one answer of a frame: a history answer split into several frames
/// (`more`) is joined into one (an HTTP body has no frame size limit).
fn merge_history(replies: Vec<Value>) -> Option<Value> {
    let mut replies = replies.into_iter();
    let mut first = replies.next()?;
    for next in replies {
        let (Some(into), Some(more)) = (
            first["data"]["messages"].as_array_mut(),
            next["data"]["messages"].as_array(),
        ) else {
            break;
        };
        into.extend(more.iter().cloned());
        if let Some(data) = first["data"].as_object_mut() {
            data.remove("more");
        }
    }
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_the_documented_statuses() {
        for (code, status) in [
            ("bad_json", 400),
            ("unknown_type", 400),
            ("too_many_reactions", 400),
            ("unauthorized", 401),
            ("forbidden", 403),
            ("banned", 403),
            ("not_found", 404),
            ("rejected", 422),
            ("rate_limited", 429),
            ("unavailable", 503),
            ("overloaded", 503),
        ] {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn split_history_answers_are_joined() {
        let a = json!({"type":"history","data":{"messages":[{"seq":1}],"more":true}});
        let b = json!({"type":"history","data":{"messages":[{"seq":2}]}});
        let joined = merge_history(vec![a, b]).unwrap();
        assert_eq!(joined["data"]["messages"].as_array().unwrap().len(), 2);
        assert!(joined["data"].get("more").is_none());
        assert!(merge_history(Vec::new()).is_none());
    }
}
