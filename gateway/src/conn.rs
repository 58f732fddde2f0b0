//! What every long-lived client connection shares, whatever carries it
//! (`/ws` or `/sse`): the query, the access checks, the anonymous session,
//! the ban check and the gateway-wide permit, all before the connection is
//! served. The result is a [`Connection`] ticket that both transports run
//! through the same lifecycle (registry join, Redis registration, presence,
//! history, reader and writer: `ws::connection`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_shared::metrics as m;
use chat_shared::protocol::ErrorCode;

use crate::edge::listener::Peer;
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::transport::Transport;
use crate::ws::admission::{self, Refused};
use crate::ws::query::{self, WsQuery};
use crate::ws::Connection;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A refusal before the connection is served: counted by code and
/// transport, answered with the JSON error body.
pub(crate) fn reject(
    transport: Transport,
    status: StatusCode,
    code: ErrorCode,
    message: &str,
) -> Response {
    metrics::counter!(m::GW_CONNECTIONS_REJECTED, "code" => code.as_str(), "transport" => transport.label())
        .increment(1);
    ApiError::new(status, code, message).into_response()
}

/// The refusal of a connection because registrations are backed up
/// (`reason`, see [`crate::rooms::registrar::Registrar::admit`]): 503
/// `overloaded` with `Retry-After`, counted and logged once per overload
/// episode (a storm refuses thousands).
fn shed(state: &AppState, transport: Transport, reason: &'static str) -> Response {
    let retry_after = state.registrar.retry_after_secs();
    metrics::counter!(m::GW_CONNECTIONS_SHED, "reason" => reason).increment(1);
    if state.overload.mark_registrations() {
        tracing::warn!(
            reason,
            max = state.config.max_pending_registrations,
            retry_after,
            "Registrations backed up: refusing new connections with 503 overloaded"
        );
    }
    tracing::debug!(
        transport = transport.label(),
        reason = "overloaded",
        "Connection refused"
    );
    let mut response = reject(
        transport,
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Overloaded,
        "too many connections are being registered; retry after Retry-After seconds",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// Validates the query (`room`, `username`, `since`, `epoch`).
///
/// # Errors
/// The 400 answer for a bad one.
pub(crate) fn parse_query(
    params: &HashMap<String, String>,
    transport: Transport,
) -> Result<WsQuery, Box<Response>> {
    query::parse(params).map_err(|r| Box::new(reject(transport, r.status, r.code, r.message)))
}

/// Runs every check a connection must pass before it is served and takes
/// its places (per-IP slot, gateway permit): draining, registrations
/// backed up (`MAX_PENDING_REGISTRATIONS`, checked first: it is the cheapest
/// and spares Redis the session and ban reads), Origin, per-IP cap, token
/// and room, anonymous session, ban, `MAX_CONNECTIONS`.
///
/// # Errors
/// The HTTP answer of the first check that refuses (the same for both
/// transports).
pub(crate) async fn admit(
    state: &AppState,
    peer: Peer,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    query: WsQuery,
    transport: Transport,
) -> Result<Box<Connection>, Response> {
    let refuse = |status, code, message: &str| reject(transport, status, code, message);
    let WsQuery {
        room,
        username,
        resume,
    } = query;
    if state.is_draining() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "gateway is shutting down; connect to another one",
        ));
    }
    let pending = state
        .registrar
        .admit()
        .map_err(|reason| shed(state, transport, reason))?;
    let admitted = admission::admit(
        state,
        &peer,
        params,
        headers,
        &room,
        username,
        params.contains_key("username"),
    )
    .await
    .map_err(|Refused(status, code, message)| refuse(status, code, &message))?;
    // Authentication off: the client's anonymous identity, kept from its
    // `session` when that proves one, else fresh.
    let anon = match (&admitted.identity, &state.sessions) {
        (None, Some(sessions)) => {
            let presented = params.get("session").map(String::as_str);
            let resolved = sessions.resolve(&state.redis, presented).await;
            Some(resolved.map_err(|_| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "Redis unreachable; retry",
                )
            })?)
        }
        _ => None,
    };
    if crate::rooms::bans::enabled(state) {
        let user = match (&admitted.identity, &anon) {
            (Some(i), _) => i.user_id.as_str(),
            (None, Some(a)) => a.user_id.as_str(),
            (None, None) => admitted.username.as_str(),
        };
        match crate::rooms::bans::is_banned(&state.redis, &room, user).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(room = %room, user, reason = "banned", transport = transport.label(), "Connection refused");
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Banned,
                    "you are banned from this room",
                ));
            }
            Err(_) => {
                return Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "Redis unreachable; retry",
                ))
            }
        }
    }
    let Ok(permit) = state.conn_permits.clone().try_acquire_owned() else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManyConnections,
            "gateway is at its connection limit",
        ));
    };
    // One pointer until the connection is served: axum keeps the upgrade
    // callback (and so this) for as long as a WebSocket lives.
    Ok(Box::new(Connection {
        state: state.clone(),
        room,
        username: admitted.username,
        identity: admitted.identity,
        anon,
        conn_id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
        resume,
        slot: admitted.slot,
        permit,
        pending,
        abort: peer.abort,
        transport,
    }))
}
