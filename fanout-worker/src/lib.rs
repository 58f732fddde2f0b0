//! `chat-fanout-worker`: turns stream entries into history and deliveries.
//!
//! # Layout
//! - [`config`]: flags and env variables.
//! - `supervisor`: holds, renews and balances shard leases (`lease`), starting
//!   one `shard` task per held shard and stopping it when the lease is lost.
//! - `shard`: claims pending entries and reads new ones while the lease holds,
//!   through `stream` (reads and claims fenced by the lease in Redis, a
//!   wake-up wait that delivers nothing, a trim that keeps pending entries).
//! - `batch`: runs each batch through its stages: decode (`hold`: entries of
//!   a newer envelope version and their rooms' later entries stay pending for
//!   a newer worker), persist (`persist`, idempotent Lua: history, `seq`,
//!   epoch) and look up the rooms' gateways, route (`publish`: one delivery
//!   batch per owning gateway), then publish, ack and trim.
//!   With `WEBHOOK_URL` set, the acknowledge round trip also queues every
//!   routed record in the shard's webhook outbox, and a `webhook` sender
//!   beside each shard task POSTs them, signed, in order.
//! - `janitor`: one worker at a time removes dead gateways' connection entries
//!   and rooms with neither connections nor history from `rooms:active`;
//!   `presence_sweep` announces the `leave` of users it left with no
//!   connection.
//! - `http`: `/metrics`, `/livez`, `/readyz`.
//! - [`release`]: the `release-held --shard <n>` operator command, which
//!   drops a shard's entries of a newer envelope version when no newer
//!   worker is coming.
//!
//! [`run`] is what `main` calls and what tests start: the binary is a thin shell.

mod batch;
pub mod config;
mod hold;
mod http;
mod index_sweep;
mod janitor;
mod lease;
mod lua;
mod persist;
mod presence_sweep;
mod publish;
pub mod release;
mod shard;
mod stream;
mod supervisor;
mod webhook;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_shared::metrics::Exporter as Handle;
use chat_shared::redis::RedisHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;

/// Everything the worker's tasks share.
pub(crate) struct Context {
    pub(crate) config: WorkerConfig,
    pub(crate) worker_id: String,
    pub(crate) redis: RedisHandle,
    pub(crate) metrics: Option<Handle>,
    /// The webhook, when `WEBHOOK_URL` is set.
    pub(crate) webhook: Option<Arc<webhook::Webhook>>,
    ready: AtomicBool,
}

impl Context {
    pub(crate) fn set_ready(&self, v: bool) {
        self.ready.store(v, Ordering::Release);
    }
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Runs the worker until `shutdown` is cancelled, then drains and returns.
///
/// `listener` serves the HTTP endpoints; `metrics` renders `/metrics` (tests
/// may pass `None` when no recorder is installed).
///
/// # Errors
/// Fails when the Redis configuration or the webhook's secret file or HTTP
/// client is unusable.
pub async fn run(
    config: WorkerConfig,
    worker_id: String,
    listener: TcpListener,
    metrics: Option<Handle>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let redis = RedisHandle::new(&config.redis)?;
    // Dashboards and rate() alerts see every series from the start, at 0.
    chat_shared::metrics::register_at_zero(chat_shared::metrics::Role::Worker);
    let webhook = webhook::Webhook::from_args(&config.webhook)?;
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let ctx = Arc::new(Context {
        config,
        worker_id,
        redis,
        metrics,
        webhook,
        ready: AtomicBool::new(false),
    });
    tracing::info!(
        worker_id = %ctx.worker_id,
        shards = ctx.config.stream_shards,
        webhook = ctx.webhook.is_some(),
        "Worker starting"
    );

    let http_stop = CancellationToken::new();
    let http = {
        let stop = http_stop.clone();
        let app = http::router(ctx.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        })
    };
    if let Some(m) = &ctx.metrics {
        m.spawn_upkeep(shutdown.clone());
    }

    let keepalive = ctx.redis.spawn_keepalive(shutdown.clone());
    let supervisor = tokio::spawn(supervisor::run(ctx.clone(), shutdown.clone()));
    let janitor = tokio::spawn(janitor::run(ctx.clone(), shutdown.clone()));
    shutdown.cancelled().await;
    tracing::info!(grace_secs = grace.as_secs(), "Draining worker");
    if tokio::time::timeout(grace, supervisor).await.is_err() {
        tracing::warn!("Drain exceeded the grace period; exiting anyway");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), janitor).await;
    let _ = keepalive.await;
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
    tracing::info!("Worker stopped");
    Ok(())
}
