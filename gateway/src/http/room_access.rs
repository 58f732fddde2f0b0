//! Access on every room-scoped HTTP door: one middleware in front of every
//! route under `/rooms/{room}/…`, so a route added there later cannot forget
//! the checks `/ws` applies.
//!
//! With authentication on, a request needs an API key (`Authorization:
//! Bearer`, which may read every room) or a user token (`Authorization:
//! Bearer` or `?token=`): 401 `unauthorized` without one, 403 `forbidden`
//! for a room outside the token's `rooms`, 403 `banned` for a banned user.
//! Reads (`GET`) are then bounded: an anonymous client spends its per-IP
//! budget (`USER_RATE_LIMIT_PER_SEC`, the one its messages spend), and at
//! most `HTTP_READ_CONCURRENCY` run at once per gateway; one that cannot
//! start within [`READ_QUEUE_TIMEOUT`] gets 503 `overloaded` with
//! `Retry-After: 1`. Routes with their own credential rules (publish, bans)
//! apply them after these checks.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use chat_shared::protocol::ErrorCode;

use crate::edge::api_keys::bearer;
use crate::edge::auth::AuthError;
use crate::edge::listener::Peer;
use crate::http::error::{parse_room, ApiError};
use crate::state::AppState;

/// How long a read may wait for one of the `HTTP_READ_CONCURRENCY` slots.
pub const READ_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// Who a room-scoped request was admitted as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off.
    Anonymous,
    /// A configured API key.
    ApiKey,
    /// A verified user token: the user's id.
    User(String),
}

/// The middleware: runs the checks, then the route.
pub async fn guard(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(path): Path<HashMap<String, String>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(request.method());
    let room = match path.get("room").map(|r| parse_room(r)) {
        Some(Ok(room)) => room,
        Some(Err(e)) => return e.into_response(),
        None => {
            return ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
                .into_response()
        }
    };
    let caller = match admit(&state, request.headers(), &query, &room).await {
        Ok(caller) => caller,
        Err(e) => {
            metrics::counter!(m::GW_HTTP_REFUSED, "route" => route, "code" => e.code().as_str())
                .increment(1);
            return e.into_response();
        }
    };
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    if caller == Caller::Anonymous {
        if let Some(limit) = state.user_limit {
            let ip = crate::edge::access::budget_ip(
                state.access.client_ip_of(peer.addr.ip(), request.headers()),
            );
            if let Ok(false) = limit.allow(&state.redis, &format!("ip:{ip}")).await {
                metrics::counter!(m::GW_HTTP_REFUSED, "route" => route, "code" => "rate_limited")
                    .increment(1);
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RateLimited,
                    "this client reads faster than USER_RATE_LIMIT_PER_SEC allows",
                )
                .into_response();
            }
        }
    }
    let permit = tokio::time::timeout(
        READ_QUEUE_TIMEOUT,
        state.read_permits.clone().acquire_owned(),
    )
    .await;
    let Ok(Ok(_permit)) = permit else {
        metrics::counter!(m::GW_HTTP_REFUSED, "route" => route, "code" => "overloaded")
            .increment(1);
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "too many HTTP reads in flight on this gateway (HTTP_READ_CONCURRENCY); retry in 1 s",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}

/// The metric label of a request: reads and writes.
fn route_label(method: &Method) -> &'static str {
    if method == Method::GET {
        "read"
    } else {
        "write"
    }
}

/// The credential checks `/ws` applies, for an HTTP request to `room`.
async fn admit(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    query: &HashMap<String, String>,
    room: &RoomId,
) -> Result<Caller, ApiError> {
    let Some(auth) = &state.auth else {
        return Ok(Caller::Anonymous);
    };
    let presented = bearer(headers);
    if let (Some(keys), Some(p)) = (&state.api_keys, presented) {
        if keys.find(p).is_some() {
            return Ok(Caller::ApiKey);
        }
    }
    let token = query.get("token").map(String::as_str).or(presented);
    let identity = match token {
        None => Err(AuthError::Missing),
        Some(t) => auth.verify_async(t).await,
    }
    .map_err(|e| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            e.to_string(),
        )
    })?;
    if !identity.may_join(room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the token does not allow this room",
        ));
    }
    match crate::rooms::bans::is_banned(&state.redis, room, &identity.user_id).await {
        Ok(false) => Ok(Caller::User(identity.user_id)),
        Ok(true) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Banned,
            "you are banned from this room",
        )),
        Err(_) => Err(ApiError::unavailable("the ban check")),
    }
}
