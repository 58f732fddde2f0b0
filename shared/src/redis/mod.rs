//! Redis connection set-up.
//!
//! Short commands share a few auto-reconnecting multiplexed connections
//! (redis-rs `ConnectionManager`), picked round-robin: a multiplexed connection
//! pipelines concurrent commands from many tasks by itself, so under load the
//! gateways' appends coalesce into few writes with no timer at idle. We do not
//! use a checkout pool (deadpool-redis): it sends `UNWATCH`+`PING` on every
//! checkout, which doubled the round trips of every command on the hot path.
//! Blocking reads (`XREADGROUP … BLOCK`) and pub/sub each need a connection of
//! their own, so [`RedisHandle::dedicated`] and [`RedisHandle::push_connection`] open
//! fresh ones that are never shared.
//!
//! Credentials travel in the URL; TLS options come from [`crate::redis::tls`].
//!
//! With a cluster `REDIS_URL` (`redis+cluster://…` or `REDIS_CLUSTER=true`)
//! the same handle talks to a Redis Cluster through redis-rs's async cluster
//! client: one cluster connection is shared (it multiplexes per node and
//! follows `MOVED`/`ASK` redirections), dedicated connections are cluster
//! connections of their own, delivery channels use sharded pub/sub
//! (`SPUBLISH`/`SSUBSCRIBE`), and pipelines are cut per slot ([`conn`]).
//!
//! **No library re-sends what must not run twice.** redis-rs's cluster
//! client re-sends a request after a dropped connection, and a whole slot
//! run after a redirect in any of its replies; an append that already ran
//! would run again (stored twice, or its dedupe marker found and its own
//! index entry removed), and a worker's stream read would move entries into
//! its pending list behind its back. So the `*_once` requests go over a
//! second cluster connection built with `retries(0)`, so do dedicated
//! connections (the workers' stream readers), and [`conn`] re-sends only a
//! single command a node refused to run. On a single Redis, redis-rs's
//! `ConnectionManager` never re-sends a command: after a dropped connection
//! it reconnects and returns the error (its `number_of_retries` counts
//! reconnection attempts), and [`RedisHandle::with_retry`] repeats only
//! idempotent requests.
//!
//! **`WAIT` gets connections of its own.** With `ACK_AFTER_REPLICAS`, an
//! append ends with `WAIT`, which blocks its connection until the replicas
//! confirm (up to `ACK_REPLICAS_TIMEOUT_MS`): Redis runs nothing else of that
//! client meanwhile. On a shared multiplexed connection, heartbeats and
//! probes queued behind it would stall with one slow replica, and the
//! janitor would declare a live gateway dead. `WAIT` also counts only the
//! writes of its own connection, so the write and its `WAIT` must share one:
//! [`RedisHandle::pipe_waited`] sends both over a pool kept for such
//! requests (on a single Redis, `REDIS_POOL_SIZE` connections opened on
//! first use; on a cluster, the retry-free connection of the `*_once`
//! requests, which carries nothing but appends).

mod commands;
pub mod conn;
mod dedicated;
mod error;
mod requests;

pub mod cluster;
pub mod connections;
pub mod keys;
pub mod tls;

pub use conn::Conn;
pub use dedicated::PushConn;
pub use error::RedisError;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClient;
use redis::IntoConnectionInfo;

use crate::config::RedisArgs;

/// Shared connections plus what is needed to open dedicated ones.
#[derive(Clone)]
pub struct RedisHandle {
    /// Swappable so that a connection stuck on a refused handshake can be
    /// replaced (see [`RedisHandle::replace_if_stuck`]).
    shared: Arc<[ArcSwap<Conn>]>,
    /// On a cluster, the connection of the `*_once` requests: redis-rs
    /// retries off (see the module docs). `None` on a single Redis.
    once: Option<Arc<Conn>>,
    /// On a single Redis with `ACK_AFTER_REPLICAS`, the connections of
    /// [`Self::pipe_waited`] (see the module docs); empty otherwise.
    waited: Arc<[ArcSwap<Conn>]>,
    next: Arc<AtomicUsize>,
    backend: Arc<Backend>,
    timeout: Duration,
}

/// What opens new connections: a single Redis or a cluster.
#[allow(clippy::large_enum_variant)] // built once per process, behind an Arc
enum Backend {
    Single {
        client: redis::Client,
        /// RESP3, for connections that receive pub/sub messages as pushes.
        push_client: redis::Client,
        manager_config: ConnectionManagerConfig,
    },
    Cluster {
        /// The seed nodes and TLS files, to build clients with other settings.
        nodes: Vec<String>,
        certs: Option<redis::TlsCertificates>,
    },
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
            .field("connections", &self.shared.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The redis-rs client for the URL and TLS options. Credentials travel in the
/// URL (`redis://user:password@host`); redis-rs sends `AUTH` on every new
/// connection.
fn build_client(
    args: &RedisArgs,
    protocol: redis::ProtocolVersion,
) -> Result<redis::Client, RedisError> {
    crate::redis::tls::install_crypto_provider();
    let url = args.normalized_url();
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(RedisError::Url)?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    let info = info.set_redis_settings(settings);
    let tls_files = args.redis_ca_file.is_some() || args.redis_client_cert_file.is_some();
    if tls_files && !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(RedisError::Tls(
            "REDIS_CA_FILE and REDIS_CLIENT_CERT_FILE need a rediss:// REDIS_URL".into(),
        ));
    }
    match crate::redis::tls::certificates(args).map_err(|e| RedisError::Tls(e.to_string()))? {
        None => redis::Client::open(info).map_err(RedisError::Url),
        Some(certs) => redis::Client::build_with_tls(info, certs).map_err(RedisError::Url),
    }
}

impl RedisHandle {
    /// Builds the shared connections; they connect lazily on first use and
    /// reconnect by themselves after a failure.
    ///
    /// # Errors
    /// Fails when the URL is invalid or a TLS file is unusable.
    pub fn new(args: &RedisArgs) -> Result<Self, RedisError> {
        let timeout = args.timeout();
        if let Some(nodes) = args.cluster_nodes() {
            return Self::new_cluster(args, nodes, timeout);
        }
        let client = build_client(args, redis::ProtocolVersion::RESP2)?;
        let push_client = build_client(args, redis::ProtocolVersion::RESP3)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let pool = |size: usize| {
            (0..size)
                .map(|_| {
                    let manager = client.get_connection_manager_lazy(config.clone())?;
                    Ok(ArcSwap::from_pointee(Conn::Managed(manager)))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(RedisError::Url)
        };
        let shared = pool(args.redis_pool_size.max(1))?;
        let waited = match args.replica_ack() {
            Some(_) => pool(args.redis_pool_size.max(1))?,
            None => Vec::new(),
        };
        Ok(Self {
            shared: shared.into(),
            once: None,
            waited: waited.into(),
            next: Arc::new(AtomicUsize::new(0)),
            backend: Arc::new(Backend::Single {
                client,
                push_client,
                manager_config: config,
            }),
            timeout,
        })
    }

    /// The cluster variant of [`Self::new`]: one shared cluster connection
    /// (it multiplexes per node), connecting in the background.
    fn new_cluster(
        args: &RedisArgs,
        nodes: Vec<String>,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        crate::redis::tls::install_crypto_provider();
        let certs =
            crate::redis::tls::certificates(args).map_err(|e| RedisError::Tls(e.to_string()))?;
        let backend = Backend::Cluster { nodes, certs };
        let client = backend.cluster_client(redis::ProtocolVersion::RESP2, timeout, true)?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let conn = client.get_pending_async_connection_with_config(config.clone());
        let once_client = backend.cluster_client(redis::ProtocolVersion::RESP2, timeout, false)?;
        let once = once_client.get_pending_async_connection_with_config(config);
        Ok(Self {
            shared: vec![ArcSwap::from_pointee(Conn::Cluster(conn))].into(),
            once: Some(Arc::new(Conn::Cluster(once))),
            waited: Vec::new().into(),
            next: Arc::new(AtomicUsize::new(0)),
            backend: Arc::new(backend),
            timeout,
        })
    }

    /// Whether this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.backend, Backend::Cluster { .. })
    }

    /// The command that publishes to a gateway's delivery channel: sharded
    /// `SPUBLISH` on a cluster (the message goes only to the node owning the
    /// channel's slot), `PUBLISH` on a single Redis.
    pub fn publish_command(&self) -> &'static str {
        conn::publish_command(self.is_cluster())
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Backend {
    /// A cluster client speaking `protocol` with `response_timeout`;
    /// without `library_retries` redis-rs never re-sends a request (see the
    /// module docs).
    fn cluster_client(
        &self,
        protocol: redis::ProtocolVersion,
        response_timeout: Duration,
        library_retries: bool,
    ) -> Result<ClusterClient, RedisError> {
        let Self::Cluster { nodes, certs } = self else {
            return Err(RedisError::Connection("not a cluster".into()));
        };
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
            .use_protocol(protocol)
            .connection_timeout(response_timeout.min(Duration::from_secs(5)))
            .response_timeout(response_timeout);
        if !library_retries {
            builder = builder.retries(0);
        }
        if let Some(certs) = certs {
            builder = builder.certs(certs.clone());
        }
        builder.build().map_err(RedisError::Url)
    }
}
