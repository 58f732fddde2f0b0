//! The worker's small HTTP server: `/metrics`, `/livez`, `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::Context;

/// Routes of the worker's HTTP server.
pub(crate) fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/health", get(readyz))
        .with_state(ctx)
}

async fn metrics(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        ctx.metrics.as_ref().map(|h| h.render()).unwrap_or_default(),
    )
}

/// Ready when Redis answers and the supervisor has completed a tick;
/// `warnings` lists problems that do not stop service (an evicting Redis).
async fn readyz(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    let redis_ok = ctx.redis.ping().await.is_ok();
    let ready = redis_ok && ctx.is_ready();
    let warnings: Vec<String> = ctx.redis.eviction_warning().await.into_iter().collect();
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "unavailable" },
        "redis": if redis_ok { "ok" } else { "unreachable" },
        "worker_id": ctx.worker_id,
        "warnings": warnings,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}
