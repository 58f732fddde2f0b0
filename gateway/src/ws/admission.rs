//! The access checks of a WebSocket request, after its query is valid and
//! before the upgrade: Origin, per-IP cap, token and room permission. Each
//! refusal is counted by code and logged with its reason and the client IP
//! (and the user, once known) — never with the token.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, StatusCode};
use chat_shared::ids::{RoomId, Username};
use chat_shared::protocol::ErrorCode;

use crate::edge::access::IpSlot;
use crate::edge::api_keys::bearer;
use crate::edge::auth::{AuthError, Identity};
use crate::edge::listener::Peer;
use crate::state::AppState;

/// A refusal: HTTP status, error code and message for the JSON body.
#[derive(Debug)]
pub(crate) struct Refused(
    pub(crate) StatusCode,
    pub(crate) ErrorCode,
    pub(crate) String,
);

/// What an admitted connection carries.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The verified user, when authentication is on.
    pub(crate) identity: Option<Identity>,
    /// The sender name: the token's when authenticated, else the query's.
    pub(crate) username: Username,
    /// The client IP's connection slot (released when the connection ends).
    pub(crate) slot: IpSlot,
}

/// Runs the checks in order: Origin (403 `forbidden_origin`), per-IP cap
/// (429 `too_many_connections`), token (401 `unauthorized`), room and name
/// against the token (403 `forbidden`).
pub(crate) async fn admit(
    state: &AppState,
    peer: &Peer,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    room: &RoomId,
    username: Username,
    username_given: bool,
) -> Result<Admitted, Refused> {
    let ip = state.access.client_ip_of(peer.addr.ip(), headers);
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !state.access.origin_allowed(origin) {
        tracing::info!(%ip, origin, reason = "forbidden_origin", "WebSocket refused");
        return Err(Refused(
            StatusCode::FORBIDDEN,
            ErrorCode::ForbiddenOrigin,
            "this Origin is not in ALLOWED_ORIGINS".to_string(),
        ));
    }
    let Some(slot) = state.access.admit(ip) else {
        tracing::info!(%ip, reason = "too_many_connections", "WebSocket refused");
        return Err(Refused(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyConnections,
            "too many connections from this client IP (MAX_CONNECTIONS_PER_IP)".to_string(),
        ));
    };
    let Some(auth) = &state.auth else {
        return Ok(Admitted {
            identity: None,
            username,
            slot,
        });
    };
    let token = params
        .get("token")
        .map(String::as_str)
        .or_else(|| bearer(headers));
    let identity = match token {
        None => Err(AuthError::Missing),
        Some(t) => auth.verify_async(t).await,
    };
    let identity = match identity {
        Ok(id) => id,
        Err(e) => {
            tracing::info!(%ip, reason = "unauthorized", error = %e, "WebSocket refused");
            let message = e.to_string();
            return Err(Refused(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                message,
            ));
        }
    };
    if !identity.may_join(room) {
        tracing::info!(%ip, user = identity.user_id, reason = "forbidden", "WebSocket refused: room not in token");
        return Err(Refused(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the token does not allow this room".to_string(),
        ));
    }
    if username_given && username != identity.name {
        tracing::info!(%ip, user = identity.user_id, reason = "forbidden", "WebSocket refused: username differs from token");
        return Err(Refused(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "username differs from the token's name; omit it".to_string(),
        ));
    }
    Ok(Admitted {
        username: identity.name.clone(),
        identity: Some(identity),
        slot,
    })
}
