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
use crate::delivery::registry::LocalRooms;
use crate::delivery::subscriber::SubscriptionState;
use crate::edge::access::AccessPolicy;
use crate::edge::api_keys::ApiKeys;
use crate::edge::auth::Authenticator;
use crate::edge::session::Sessions;
use crate::edge::user_limit::UserLimit;

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
    pub overload: crate::edge::overload::Overload,
    /// Validation limits derived from the config.
    pub limits: Limits,
    /// Renders `/metrics`, when a recorder is installed.
    pub metrics: Option<Exporter>,
    /// Bounds the history reads of connections (joins, gap fills, resets):
    /// after a resync every connection needs one, and they queue here instead
    /// of all hitting Redis at once.
    pub catch_up_permits: Arc<Semaphore>,
    /// Bounds the history searches in flight (each reads a whole history).
    pub search_permits: Arc<Semaphore>,
    /// Verifies client tokens; `None` when authentication is off.
    pub auth: Option<Authenticator>,
    /// Origin policy, client IPs and the per-IP cap.
    pub access: Arc<AccessPolicy>,
    /// Keys of the HTTP publish API; `None` when the API is off.
    pub api_keys: Option<ApiKeys>,
    /// The per-user budget in Redis; `None` when off.
    pub user_limit: Option<UserLimit>,
    /// The per-user budget of new rooms; `None` when off.
    pub room_creation: Option<UserLimit>,
    /// Issues anonymous identities; `None` when authentication is on.
    pub sessions: Option<Sessions>,
    /// `presence_count` instead of join / leave in large rooms.
    pub presence_counts: Arc<chat_shared::presence_count::PresenceCounts>,
    /// Bounds the HTTP room reads in flight (`HTTP_READ_CONCURRENCY`).
    pub read_permits: Arc<Semaphore>,
    /// The application's pre-publish hook; `None` without `PUBLISH_HOOK_URL`.
    pub publish_hook: Option<crate::hook::PublishHook>,
    /// Admits connections while registrations keep up
    /// (`MAX_PENDING_REGISTRATIONS`) and batches their registrations.
    pub registrar: crate::rooms::registrar::Registrar,
}

/// Connection history reads in flight at once, per gateway.
pub const CATCH_UP_CONCURRENCY: usize = 32;

/// History searches in flight at once, per gateway; more wait their turn.
pub const SEARCH_CONCURRENCY: usize = 4;

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// Builds the state and starts the registration batcher (so it needs
    /// a Tokio runtime).
    ///
    /// # Errors
    /// A message for the operator when the access settings are unusable
    /// (unreadable key files, bad CIDRs).
    pub fn new(
        config: GatewayConfig,
        gateway_id: String,
        redis: RedisHandle,
        metrics: Option<Exporter>,
        shutdown: CancellationToken,
    ) -> Result<Self, String> {
        let limits = Limits {
            max_message_chars: config.max_message_len as usize,
            max_history_limit: config.history_page_max as usize,
        };
        let auth = Authenticator::from_args(&config.access)?;
        let access = Arc::new(AccessPolicy::from_args(&config.access)?);
        let api_keys = ApiKeys::from_args(&config.access)?;
        let publish_hook = crate::hook::PublishHook::from_args(&config.publish_hook, limits)?;
        let user_limit = UserLimit::new(
            config.access.user_rate_limit_per_sec,
            config.access.user_rate_limit_burst,
        );
        let room_creation = UserLimit::new(
            config.access.room_creation_per_min / 60.0,
            config.access.room_creation_burst,
        );
        let sessions = auth
            .is_none()
            .then(|| Sessions::new(config.session_secret.as_deref()));
        let read_permits = Arc::new(Semaphore::new(
            usize::try_from(config.http_read_concurrency).unwrap_or(usize::MAX),
        ));
        let registrar =
            crate::rooms::registrar::Registrar::spawn(&config, gateway_id.clone(), redis.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                registrar,
                presence_counts: chat_shared::presence_count::PresenceCounts::new(
                    redis.clone(),
                    config.presence_events_max_members,
                ),
                conn_permits: Arc::new(Semaphore::new(crate::edge::fd_budget::max_connections(
                    config.max_connections,
                    config.max_pending_handshakes,
                ))),
                config,
                gateway_id,
                redis,
                rooms: Arc::new(LocalRooms::default()),
                subscription: Arc::new(SubscriptionState::default()),
                connections: AtomicUsize::new(0),
                tracker: TaskTracker::new(),
                shutdown,
                draining: AtomicBool::new(false),
                overload: crate::edge::overload::Overload::default(),
                limits,
                metrics,
                catch_up_permits: Arc::new(Semaphore::new(CATCH_UP_CONCURRENCY)),
                search_permits: Arc::new(Semaphore::new(SEARCH_CONCURRENCY)),
                auth,
                access,
                api_keys,
                user_limit,
                room_creation,
                sessions,
                read_permits,
                publish_hook,
            }),
        })
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
