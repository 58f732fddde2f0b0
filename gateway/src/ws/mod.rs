//! The WebSocket endpoint: `GET /ws?room=R[&username=U][&since=S][&epoch=E]`.
//!
//! Everything that can be refused is refused here, before the upgrade, with an
//! HTTP error and a JSON body: bad room, bad username, bad `since`, draining, or
//! `MAX_CONNECTIONS` reached. The upgrade sets explicit frame, message and write
//! buffer limits (axum's defaults are 64 MiB and unbounded). The socket task is
//! tracked so the drain can wait for it (axum's graceful shutdown does not).
//!
//! The query is validated by [`query`]. Each connection is served by [`connection`]: a [`reader`] for inbound
//! frames and a [`writer`] that alone writes to the socket (or to what
//! stands for it, [`outgoing`]), with the pure
//! ordering [`cursor`], the [`opening`] (registration, join history), history reads for [`recovery`] and the [`close`]
//! reasons.

pub(crate) mod admission;
mod appender;
pub(crate) mod close;
mod connection;
mod cursor;
mod opening;
pub(crate) mod outgoing;
pub(crate) mod query;
pub(crate) mod reader;
mod recovery;
pub(crate) mod writer;

use std::collections::HashMap;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chat_shared::protocol::ErrorCode;
use tracing::Instrument;

use crate::edge::listener::Peer;
use crate::state::AppState;
use crate::transport::Transport;

pub(crate) use connection::Connection;

/// Where a joining client wants its history to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Deliver every message with `seq` above this.
    pub(crate) since: u64,
    /// The epoch the client's `since` belongs to, if it knows it.
    pub(crate) epoch: Option<String>,
}

/// Upper bound of a socket's write buffer: room for the largest frame plus the
/// small frames queued behind it.
fn max_write_buffer(max_message_chars: usize) -> usize {
    let largest_record = max_message_chars * 6 + 1024;
    (2 * chat_shared::protocol::HISTORY_FRAME_BYTES.max(largest_record)).max(256 * 1024)
}

/// Validates the request and upgrades it.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = match crate::conn::parse_query(&params, Transport::Ws) {
        Ok(q) => q,
        Err(refused) => return *refused,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return crate::conn::reject(
                Transport::Ws,
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::InvalidParameter,
                "this endpoint needs a WebSocket upgrade request",
            )
        }
    };
    let peer_addr = peer.addr;
    let conn = match crate::conn::admit(&state, peer, &params, &headers, query, Transport::Ws).await
    {
        Ok(conn) => conn,
        Err(refused) => return refused,
    };
    let span =
        tracing::info_span!("conn", conn_id = conn.conn_id, room = %conn.room, peer = %peer_addr);
    let state = conn.state.clone();
    let tracker = state.tracker.clone();
    let (read_buffer, max_message) = (
        state.config.ws_read_buffer_bytes as usize,
        state.config.ws_max_message_bytes,
    );
    let max_write = max_write_buffer(state.config.max_message_len as usize);
    ws.read_buffer_size(read_buffer)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .write_buffer_size(16 * 1024)
        // Must exceed the largest single frame we send: a history chunk, or one
        // record of MAX_MESSAGE_LEN characters at 6 bytes each once escaped.
        .max_write_buffer_size(max_write)
        .on_upgrade(move |socket| tracker.track_future(conn.run(Box::new(socket)).instrument(span)))
}
