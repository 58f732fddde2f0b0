//! The server-sent events endpoint: `GET /sse?room=R[&token=…|&session=…]
//! [&username=U][&since=S][&epoch=E]`, for clients whose WebSockets are
//! blocked (corporate proxies, some carriers). It receives what `/ws` would
//! send, frame for frame (each event's `data:` is the frame's JSON,
//! [`frame`]); the client sends over HTTP (`POST /rooms/{room}/messages`
//! and `/events`).
//!
//! It is a connection like a WebSocket: the same checks and refusals
//! ([`crate::conn::admit`]), the same `MAX_CONNECTIONS`, per-IP slot,
//! presence, registry queue, recovery and slow-consumer policy
//! (`ws::connection` serves it through [`stream::SseSink`]). A
//! `Last-Event-ID: N` header (what a reconnecting `EventSource` sends)
//! overrides `since`; the epoch comes from the URL. A `: keepalive` comment
//! goes out every [`KEEPALIVE_INTERVAL`].

pub(crate) mod frame;
pub(crate) mod stream;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chat_shared::metrics as m;
use chat_shared::protocol::ErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::conn;
use crate::edge::handshake::Streaming;
use crate::edge::listener::Peer;
use crate::state::AppState;
use crate::transport::Transport;
use crate::ws::close::CloseReason;
use crate::ws::Resume;

/// How often an idle stream gets a `: keepalive` comment (DESIGN.md: 15 s).
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// `GET /sse`: checks the request like `/ws`, then streams the room.
pub(crate) async fn stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    streaming: Option<Extension<Streaming>>,
) -> Response {
    let mut query = match conn::parse_query(&params, Transport::Sse) {
        Ok(q) => q,
        Err(refused) => return *refused,
    };
    if let Some(last) = headers.get("last-event-id") {
        let Some(since) = last.to_str().ok().and_then(|v| v.trim().parse().ok()) else {
            return conn::reject(
                Transport::Sse,
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidParameter,
                "Last-Event-ID must be a non-negative integer",
            );
        };
        query.resume = Some(Resume {
            since,
            epoch: params.get("epoch").cloned(),
        });
    }
    let peer_addr = peer.addr;
    let conn = match conn::admit(&state, peer, &params, &headers, query, Transport::Sse).await {
        Ok(conn) => conn,
        Err(refused) => return refused,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(stream::EVENT_BUFFER);
    let (done, kill) = (CancellationToken::new(), CancellationToken::new());
    let body = stream::SseBody::new(rx, kill.clone(), done.clone());
    if let Some(Extension(streaming)) = streaming {
        streaming.start();
    }
    let span = tracing::info_span!("conn", conn_id = conn.conn_id, room = %conn.room, peer = %peer_addr, transport = "sse");
    let abort = conn.abort.clone();
    let write_timeout = state.config.write_timeout();
    // The reader's idle timeout must never fire on a stream that lives.
    let pong_every = (state.config.idle_timeout() / 3).max(Duration::from_millis(100));
    state.tracker.spawn(
        async move {
            let sink = stream::SseSink::new(tx);
            let inbound = stream::inbound(done.clone(), pong_every);
            let reason = conn.serve_on(sink, inbound, KEEPALIVE_INTERVAL).await;
            // The sink is gone, so the body ends once hyper has written
            // what is queued; a client that does not take it is cut off.
            let drained = reason != CloseReason::SlowConsumer
                && tokio::time::timeout(write_timeout, done.cancelled())
                    .await
                    .is_ok();
            if !drained {
                if reason != CloseReason::SlowConsumer {
                    metrics::counter!(m::GW_SOCKETS_ABORTED).increment(1);
                }
                abort.abort_on_close();
                kill.cancel();
            }
        }
        .instrument(span),
    );
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    // What axum's `Sse` response sets.
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) must pass events on as they come.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // The connection ends with the stream: no keep-alive reuse after it.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
