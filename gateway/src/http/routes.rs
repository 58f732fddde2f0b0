//! HTTP routes: the WebSocket endpoint, health, readiness, metrics, history
//! pages, and the room state of presence and read receipts.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use chat_shared::protocol::{ErrorCode, HistoryData};

pub use crate::http::error::ApiError;

use crate::http::error::parse_room;
use crate::http::room_access;
use crate::rooms::history;
use crate::rooms::search;
use crate::state::AppState;
use crate::ws;

/// All routes of the gateway.
pub fn router(state: AppState) -> Router {
    let demo = state.config.demo_page;
    let demo_gateways = state.config.demo_gateways.clone();
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/sse", get(crate::sse::stream))
        .route("/health", get(health))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/rooms/{room}", room_routes(state.clone()))
        .merge(if demo {
            crate::http::demo::routes::<AppState>(&demo_gateways)
        } else {
            Router::new()
        })
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
        })
        .with_state(state)
}

/// Every route under `/rooms/{room}`: the paths and methods, relative to it.
/// The access middleware ([`room_access::guard`]) sits in front of all of
/// them; a route added here gets it too. Tests walk this list.
pub const ROOM_ROUTES: &[(&str, &str)] = &[
    ("GET", "/messages"),
    ("POST", "/messages"),
    ("POST", "/events"),
    ("GET", "/presence"),
    ("GET", "/reads"),
    ("POST", "/bans"),
    ("DELETE", "/bans/{user}"),
];

/// The room-scoped routes behind the access middleware.
fn room_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/messages",
            get(messages).post(crate::http::send::post_message),
        )
        .route("/events", post(crate::http::send::post_event))
        .route(
            "/presence",
            get(crate::rooms::presence_events::http_presence),
        )
        .route("/reads", get(crate::rooms::receipts::http_reads))
        .route("/bans", post(crate::rooms::bans::place))
        .route("/bans/{user}", delete(crate::rooms::bans::lift))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            room_access::guard,
        ))
}

/// `GET /health`: 200 when Redis answers PING, else 503. `warnings` lists
/// configuration problems that do not stop service (e.g. an evicting Redis).
async fn health(State(state): State<AppState>) -> Response {
    let redis_ok = state.redis.ping().await.is_ok();
    let sub_ok = state.subscription.is_up();
    let warnings: Vec<String> = state.redis.eviction_warning().await.into_iter().collect();
    let body = serde_json::json!({
        "status": if redis_ok && sub_ok { "ok" } else { "degraded" },
        "redis": if redis_ok { "ok" } else { "unreachable" },
        "delivery": if sub_ok { "ok" } else { "down" },
        "gateway_id": state.gateway_id,
        "connections": state.connection_count(),
        "draining": state.is_draining(),
        "warnings": warnings,
    });
    let code = if redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /readyz`: 503 while draining, without Redis, without a delivery
/// subscription, or overloaded (`server::Overload`). A ready gateway whose Redis may evict keys says so in the
/// body (still 200: it serves, but the operator should act).
async fn readyz(State(state): State<AppState>) -> Response {
    let ready =
        !state.is_draining() && state.subscription.is_up() && state.redis.ping().await.is_ok();
    if !ready {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response();
    }
    if let Some(why) = state.overload.reason() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")).into_response();
    }
    match state.redis.eviction_warning().await {
        None => (StatusCode::OK, "ready").into_response(),
        Some(w) => (StatusCode::OK, format!("ready; warning: {w}")).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!(m::GW_ROOMS).set(state.rooms.room_count() as f64);
    (
        [("content-type", "text/plain; version=0.0.4")],
        state
            .metrics
            .as_ref()
            .map(|h| h.render())
            .unwrap_or_default(),
    )
        .into_response()
}

/// `GET /rooms/{room}/messages?limit=&before_seq=`: the newest `limit` messages
/// with `seq < before_seq` (default: the newest), oldest first in the page. To
/// walk back, pass the page's smallest `seq` as the next `before_seq`.
///
/// With `q=<text>` it is a search ([`search`]): the newest `limit` messages
/// with `seq < before_seq` whose text contains `q` ignoring case, **newest
/// first**, with `more: true` when older matches remain (pass the page's
/// smallest `seq` as the next `before_seq`).
async fn messages(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let max = state.config.history_page_max as usize;
    let limit = match params.get("limit") {
        None => 50.min(max),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidParameter,
                    format!("limit must be an integer between 1 and {max}"),
                ))
            }
        },
    };
    let before = match params.get("before_seq") {
        None => None,
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidParameter,
                "before_seq must be a non-negative integer",
            )
        })?),
    };
    if let Some(q) = params.get("q") {
        return search_page(&state, &room, q, before, limit).await;
    }
    let range = match before {
        Some(before) => history::Range::Before { before, limit },
        None => history::Range::Tail(limit),
    };
    let snap = history::read(&state.redis, &room, range)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "history is unavailable: Redis unreachable",
            )
        })?;
    let meta = snap.meta(&room);
    let body = HistoryData::new(&meta, snap.records.iter().map(|(_, r)| r.as_str())).to_json();
    Ok(([("content-type", "application/json")], body).into_response())
}

/// The search variant of [`messages`].
async fn search_page(
    state: &AppState,
    room: &RoomId,
    q: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Response, ApiError> {
    let chars = q.chars().count();
    if chars == 0 || chars > search::MAX_QUERY_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParameter,
            format!("q must be 1-{} characters", search::MAX_QUERY_CHARS),
        ));
    }
    let _permit = state
        .search_permits
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("search"))?;
    let found = search::search(&state.redis, room, q, before, limit)
        .await
        .map_err(|_| ApiError::unavailable("search"))?;
    metrics::counter!(m::GW_SEARCHES).increment(1);
    let mut meta = found.snapshot.meta(room);
    meta.more = found.more;
    let body = HistoryData::new(&meta, found.records()).to_json();
    Ok(([("content-type", "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::listener::Peer;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use clap::Parser;
    use tower::ServiceExt;

    /// Walks every room-scoped route of the router with authentication on
    /// and no credentials: each must answer 401 before its handler runs
    /// (no Redis is reachable here, so a route that skipped the checks would
    /// answer something else).
    #[tokio::test]
    async fn every_room_route_wants_credentials_when_auth_is_on() {
        let cfg = crate::config::GatewayConfig::parse_from([
            "chat-gateway",
            "--jwt-secret",
            "a-secret-of-at-least-thirty-two-bytes!",
            "--redis-url",
            "redis://127.0.0.1:1",
        ]);
        let redis = chat_shared::redis::RedisHandle::new(&cfg.redis).unwrap();
        let state = AppState::new(
            cfg,
            "g".into(),
            redis,
            None,
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        let app = router(state);
        assert!(ROOM_ROUTES.len() >= 6);
        for (method, path) in ROOM_ROUTES {
            let uri = format!("/rooms/secret{}", path.replace("{user}", "someone"));
            let mut request = Request::builder()
                .method(*method)
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            request.extensions_mut().insert(ConnectInfo(Peer {
                addr: "127.0.0.1:9".parse().unwrap(),
                abort: Default::default(),
            }));
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {uri} answered without credentials"
            );
        }
    }
}
