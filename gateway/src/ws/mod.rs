//! The WebSocket endpoint: `GET /ws?room=R[&username=U][&since=S][&epoch=E]`.
//!
//! Everything that can be refused is refused here, before the upgrade, with an
//! HTTP error and a JSON body: bad room, bad username, bad `since`, draining, or
//! `MAX_CONNECTIONS` reached. The upgrade sets explicit frame, message and write
//! buffer limits (axum's defaults are 64 MiB and unbounded). The socket task is
//! tracked so the drain can wait for it (axum's graceful shutdown does not).
//!
//! The query is validated by [`query`]. Each connection is served by [`connection`]: a [`reader`] for inbound
//! frames and a [`writer`] that alone writes to the socket, with the pure
//! ordering [`cursor`], history reads for [`recovery`] and the [`close`]
//! reasons.

mod admission;
mod appender;
mod close;
mod connection;
mod cursor;
mod query;
mod reader;
mod recovery;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_shared::metrics as m;
use chat_shared::protocol::ErrorCode;
use tracing::Instrument;

use crate::edge::listener::Peer;
use crate::http::error::ApiError;
use crate::state::AppState;

pub(crate) use connection::Connection;

/// Where a joining client wants its history to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Deliver every message with `seq` above this.
    pub(crate) since: u64,
    /// The epoch the client's `since` belongs to, if it knows it.
    pub(crate) epoch: Option<String>,
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Upper bound of a socket's write buffer: room for the largest frame plus the
/// small frames queued behind it.
fn max_write_buffer(max_message_chars: usize) -> usize {
    let largest_record = max_message_chars * 6 + 1024;
    (2 * chat_shared::protocol::HISTORY_FRAME_BYTES.max(largest_record)).max(256 * 1024)
}

fn reject(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    metrics::counter!(m::GW_CONNECTIONS_REJECTED, "code" => code.as_str()).increment(1);
    ApiError::new(status, code, message).into_response()
}

/// Validates the request and upgrades it.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query::WsQuery {
        room,
        username,
        resume,
    } = match query::parse(&params) {
        Ok(q) => q,
        Err(r) => return reject(r.status, r.code, r.message),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return reject(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::InvalidParameter,
                "this endpoint needs a WebSocket upgrade request",
            )
        }
    };
    if state.is_draining() {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "gateway is shutting down; connect to another one",
        );
    }
    let admitted = match admission::admit(
        &state,
        &peer,
        &params,
        &headers,
        &room,
        username,
        params.contains_key("username"),
    )
    .await
    {
        Ok(a) => a,
        Err(admission::Refused(status, code, message)) => return reject(status, code, &message),
    };
    // Authentication off: the client's anonymous identity, kept from its
    // `session` when that proves one, else fresh.
    let anon = match (&admitted.identity, &state.sessions) {
        (None, Some(sessions)) => {
            let presented = params.get("session").map(String::as_str);
            match sessions.resolve(&state.redis, presented).await {
                Ok(anon) => Some(anon),
                Err(_) => {
                    return reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Unavailable,
                        "Redis unreachable; retry",
                    )
                }
            }
        }
        _ => None,
    };
    if crate::rooms::bans::enabled(&state) {
        let user = match (&admitted.identity, &anon) {
            (Some(i), _) => i.user_id.as_str(),
            (None, Some(a)) => a.user_id.as_str(),
            (None, None) => admitted.username.as_str(),
        };
        match crate::rooms::bans::is_banned(&state.redis, &room, user).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(room = %room, user, reason = "banned", "WebSocket refused");
                return reject(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Banned,
                    "you are banned from this room",
                );
            }
            Err(_) => {
                return reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "Redis unreachable; retry",
                )
            }
        }
    }
    let Ok(permit) = state.conn_permits.clone().try_acquire_owned() else {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManyConnections,
            "gateway is at its connection limit",
        );
    };
    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", conn_id, room = %room, peer = %peer.addr);
    let tracker = state.tracker.clone();
    let (read_buffer, max_message) = (
        state.config.ws_read_buffer_bytes as usize,
        state.config.ws_max_message_bytes,
    );
    let max_write = max_write_buffer(state.config.max_message_len as usize);
    // One pointer in the upgrade callback: axum keeps the callback in its
    // upgrade task for as long as the connection lives.
    let conn = Box::new(Connection {
        state,
        room,
        username: admitted.username,
        identity: admitted.identity,
        anon,
        conn_id,
        resume,
        slot: admitted.slot,
        permit,
        abort: peer.abort,
    });
    ws.read_buffer_size(read_buffer)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .write_buffer_size(16 * 1024)
        // Must exceed the largest single frame we send: a history chunk, or one
        // record of MAX_MESSAGE_LEN characters at 6 bytes each once escaped.
        .max_write_buffer_size(max_write)
        .on_upgrade(move |socket| tracker.track_future(conn.run(Box::new(socket)).instrument(span)))
}
