//! State shared by every request and connection of a gateway.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use chat_shared::metrics::Exporter;
use chat_shared::protocol::Limits;
use chat_shared::redis::RedisHandle;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::rooms::LocalRooms;
use crate::subscriber::SubscriptionState;

/// Cheap to clone: everything inside is shared.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// The shared parts.
#[derive(Debug)]
pub struct Inner {
    /// Configuration as parsed.
    pub config: GatewayConfig,
    /// This gateway's identity.
    pub gateway_id: String,
    /// Redis pool and dedicated connections.
    pub redis: RedisHandle,
    /// Local fan-out registry.
    pub rooms: Arc<LocalRooms>,
    /// Delivery subscription status.
    pub subscription: Arc<SubscriptionState>,
    /// Caps open connections at `MAX_CONNECTIONS`.
    pub conn_permits: Arc<Semaphore>,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Connection tasks, awaited on drain (axum does not wait for upgraded sockets).
    pub tracker: TaskTracker,
    /// Cancelled on SIGTERM: connections close with 1001.
    pub shutdown: CancellationToken,
    /// Set at the start of the drain: `/readyz` turns 503, new upgrades are refused.
    pub draining: AtomicBool,
    /// Recent accept-loop overload (descriptor limit, pending cap), for `/readyz`.
    pub overload: crate::server::Overload,
    /// Validation limits derived from the config.
    pub limits: Limits,
    /// Renders `/metrics`, when a recorder is installed.
    pub metrics: Option<Exporter>,
    /// Bounds the history reads of connections (joins, gap fills, resets):
    /// after a resync every connection needs one, and they queue here instead
    /// of all hitting Redis at once.
    pub catch_up_permits: Arc<Semaphore>,
}

/// Connection history reads in flight at once, per gateway.
pub const CATCH_UP_CONCURRENCY: usize = 32;

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// Builds the state.
    pub fn new(
        config: GatewayConfig,
        gateway_id: String,
        redis: RedisHandle,
        metrics: Option<Exporter>,
        shutdown: CancellationToken,
    ) -> Self {
        let limits = Limits {
            max_message_chars: config.max_message_len as usize,
            max_history_limit: config.history_page_max as usize,
        };
        Self {
            inner: Arc::new(Inner {
                conn_permits: Arc::new(Semaphore::new(config.max_connections)),
                config,
                gateway_id,
                redis,
                rooms: Arc::new(LocalRooms::default()),
                subscription: Arc::new(SubscriptionState::default()),
                connections: AtomicUsize::new(0),
                tracker: TaskTracker::new(),
                shutdown,
                draining: AtomicBool::new(false),
                overload: crate::server::Overload::default(),
                limits,
                metrics,
                catch_up_permits: Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY)),
            }),
        }
    }

    /// Open connections right now.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
