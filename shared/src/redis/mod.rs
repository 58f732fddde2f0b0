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
//! Credentials travel in the URL; TLS options come from [`crate::tls`].
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
//! index entry removed). So the `*_once` requests go over a second cluster
//! connection built with `retries(0)`, and [`conn`] re-sends only a single
//! command a node refused to run. On a single Redis, redis-rs's
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

pub mod conn;

pub use conn::Conn;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClient;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};

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

/// Errors of the Redis layer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL could not be parsed.
    #[error("invalid REDIS_URL: {0}")]
    Url(#[source] redis::RedisError),
    /// A TLS option is unusable (unreadable or malformed file, or TLS files
    /// given for a URL that is not `rediss://`).
    #[error("{0}")]
    Tls(String),
    /// A connection could not be opened.
    #[error("redis connection: {0}")]
    Connection(String),
    /// A command failed.
    #[error("redis command: {0}")]
    Command(#[from] redis::RedisError),
    /// A command or connection attempt did not finish in time.
    #[error("redis timed out")]
    Timeout,
}

impl RedisError {
    /// A short fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Url(_) => "url",
            Self::Tls(_) => "tls",
            Self::Connection(_) => "connection",
            Self::Command(_) => "command",
            Self::Timeout => "timeout",
        }
    }

    /// Whether Redis answered `NOSCRIPT`: an `EVALSHA` of a script it does
    /// not hold (it restarted or was flushed); the script did not run.
    pub fn is_no_script(&self) -> bool {
        matches!(self, Self::Command(e) if e.code() == Some("NOSCRIPT"))
    }

    /// Whether Redis refused the credentials of `REDIS_URL` (wrong or missing
    /// password, unknown or disabled ACL user) or the ACL user lacks a
    /// permission: a configuration error, not an outage.
    pub fn is_auth_failure(&self) -> bool {
        let Self::Command(e) = self else {
            return false;
        };
        e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    }
}

/// The redis-rs client for the URL and TLS options. Credentials travel in the
/// URL (`redis://user:password@host`); redis-rs sends `AUTH` on every new
/// connection.
fn build_client(
    args: &RedisArgs,
    protocol: redis::ProtocolVersion,
) -> Result<redis::Client, RedisError> {
    crate::tls::install_crypto_provider();
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
    match crate::tls::certificates(args).map_err(|e| RedisError::Tls(e.to_string()))? {
        None => redis::Client::open(info).map_err(RedisError::Url),
        Some(certs) => redis::Client::build_with_tls(info, certs).map_err(RedisError::Url),
    }
}

/// Whether a failed request is worth repeating on another connection: the
/// connection was refused or is gone. (It may still have run: callers of the
/// retrying methods only send idempotent requests.)
fn not_sent(e: &redis::RedisError) -> bool {
    if e.is_connection_refusal() {
        return true;
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::NotConnected
        ),
        // The connection's driver is gone: the request was not written.
        None => e.kind() == redis::ErrorKind::Io,
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
        crate::tls::install_crypto_provider();
        let certs = crate::tls::certificates(args).map_err(|e| RedisError::Tls(e.to_string()))?;
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

    /// One of the shared connections (cheap clone), round-robin, with its slot.
    fn next_shared(&self) -> (usize, Arc<Conn>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        (i, self.shared[i].load_full())
    }

    /// Replaces the connection in slot `i` with a fresh (lazy) one when `e`
    /// says its reconnect was refused at the handshake (`AUTH` failed, e.g.
    /// while a password is being rotated). redis-rs' `ConnectionManager`
    /// reconnects after I/O errors only, so it would otherwise return that
    /// error forever, even once Redis accepts the credentials again.
    fn replace_if_stuck(
        &self,
        pool: &[ArcSwap<Conn>],
        i: usize,
        used: &Arc<Conn>,
        e: &redis::RedisError,
    ) {
        if e.kind() != redis::ErrorKind::AuthenticationFailed || i >= pool.len() {
            return;
        }
        let Backend::Single {
            client,
            manager_config,
            ..
        } = &*self.backend
        else {
            return;
        };
        if let Ok(fresh) = client
            .get_connection_manager_lazy(manager_config.clone())
            .map(Conn::Managed)
        {
            // Only if no other task replaced it meanwhile.
            pool[i].compare_and_swap(used, Arc::new(fresh));
        }
    }

    /// Runs `cmd` on a shared connection within the timeout.
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.with_retry(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a command that must not run twice (e.g. `XADD`) on a shared
    /// connection within the timeout, never retried: redis-rs reports a
    /// connection lost with requests in flight the same way as one that was
    /// never written, so a retry could apply the command twice.
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn query_once<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        self.once(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline that must not run twice on a shared connection within
    /// the timeout, never retried (see [`Self::query_once`]).
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn pipe_once<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.once(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline that ends with `WAIT` (`ACK_AFTER_REPLICAS`) and must
    /// not run twice, within the timeout, never retried (see
    /// [`Self::query_once`]), on a connection kept for such requests: the
    /// `WAIT` blocks its connection, and must not block the shared ones
    /// (see the module docs).
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn pipe_waited<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        if self.waited.is_empty() {
            return self.pipe_once(pipe).await;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.waited.len();
        let used = self.waited[i].load_full();
        let result = tokio::time::timeout(self.timeout, async {
            let mut conn = Conn::clone(&used);
            pipe.query_async(&mut conn).await
        })
        .await
        .map_err(|_| RedisError::Timeout)?;
        if let Err(e) = &result {
            self.replace_if_stuck(&self.waited, i, &used, e);
        }
        result.map_err(RedisError::from)
    }

    /// Runs a pipeline on a shared connection within the timeout.
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.with_retry(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs a Lua script (`EVALSHA`, loading it when Redis lacks it) on a
    /// shared connection within the timeout.
    ///
    /// # Errors
    /// Fails on connection errors, script errors and timeouts.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.with_retry(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await
    }

    /// Runs a Lua script that must not run twice on a shared connection
    /// within the timeout, never retried (see [`Self::query_once`]).
    ///
    /// # Errors
    /// Fails on connection errors, script errors and timeouts.
    pub async fn script_once<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.once(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await
    }

    /// Runs `op` once on a shared connection within the timeout (the
    /// `*_once` requests: never retried).
    async fn once<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (i, used) = match &self.once {
            Some(once) => (usize::MAX, once.clone()),
            None => self.next_shared(),
        };
        let result = tokio::time::timeout(self.timeout, op(Conn::clone(&used)))
            .await
            .map_err(|_| RedisError::Timeout)?;
        if let Err(e) = &result {
            self.replace_if_stuck(&self.shared, i, &used, e);
        }
        result.map_err(RedisError::from)
    }

    /// Runs `op`, moving on to the next shared connection when one turns out
    /// to be dead (after Redis restarted, each connection learns it on its
    /// next use and reconnects in the background). Only for idempotent
    /// requests: a lost connection can also fail requests Redis already ran,
    /// so non-idempotent ones go through [`Self::query_once`].
    async fn with_retry<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (i, used) = self.next_shared();
            let result = tokio::time::timeout_at(deadline, op(Conn::clone(&used)))
                .await
                .map_err(|_| RedisError::Timeout)?;
            if let Err(e) = &result {
                self.replace_if_stuck(&self.shared, i, &used, e);
            }
            match result {
                Err(e) if attempts < self.shared.len() + 1 && not_sent(&e) => continue,
                other => return other.map_err(RedisError::from),
            }
        }
    }

    /// A warning when Redis may evict keys under memory pressure: its
    /// `maxmemory-policy` is not `noeviction`, so streams, leases or sequence
    /// state could silently disappear. `None` when the policy is right or
    /// cannot be read (managed Redis often disables `CONFIG`).
    pub async fn eviction_warning(&self) -> Option<String> {
        let reply: Vec<String> = self
            .query(redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
            .await
            .ok()?;
        let policy = reply.get(1)?;
        (policy != "noeviction").then(|| {
            format!("Redis maxmemory-policy is {policy}; run Redis with noeviction so chat state is never evicted")
        })
    }

    /// `PING`, for health checks.
    ///
    /// # Errors
    /// Fails when Redis does not answer in time.
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    /// One page of `SSCAN key cursor COUNT count`: the next cursor (0 when
    /// done) and the members. Large sets are walked page by page so no single
    /// command blocks Redis.
    ///
    /// # Errors
    /// Fails when Redis does not answer.
    pub async fn sscan_page(
        &self,
        key: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<String>), RedisError> {
        self.query(
            redis::cmd("SSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(count),
        )
        .await
    }

    /// Every member of a set, read with `SSCAN` pages (members added or
    /// removed meanwhile may or may not appear, as `SSCAN` guarantees).
    ///
    /// # Errors
    /// Fails when Redis does not answer.
    pub async fn sscan_all(&self, key: &str) -> Result<Vec<String>, RedisError> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let (next, members) = self.sscan_page(key, cursor, 500).await?;
            out.extend(members);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Records `shards` as the deployment's `STREAM_SHARDS` unless one is
    /// recorded already, and returns the recorded value when it differs: a
    /// process with another shard count would put a room's messages on two
    /// streams and break its order.
    ///
    /// # Errors
    /// Fails when Redis does not answer.
    pub async fn claim_stream_shards(&self, shards: u32) -> Result<Option<u32>, RedisError> {
        let previous: Option<u32> = self
            .query(
                redis::cmd("SET")
                    .arg(crate::keys::STREAM_SHARDS)
                    .arg(shards)
                    .arg("NX")
                    .arg("GET"),
            )
            .await?;
        Ok(previous.filter(|p| *p != shards))
    }

    /// Pings every shared connection (and those of [`Self::pipe_waited`])
    /// once a second until `stop`, so that after Redis restarts each of them
    /// notices and reconnects within a second, instead of failing the next
    /// real request (an append is never retried).
    pub fn spawn_keepalive(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                for pool in [&this.shared, &this.waited] {
                    for (i, slot) in pool.iter().enumerate() {
                        let used = slot.load_full();
                        let mut conn = Conn::clone(&used);
                        let cmd = redis::cmd("PING");
                        let ping = cmd.query_async::<String>(&mut conn);
                        // A ping queued behind a `WAIT` may time out: only
                        // a refused handshake matters here.
                        if let Ok(Err(e)) = tokio::time::timeout(this.timeout, ping).await {
                            this.replace_if_stuck(pool, i, &used, &e);
                        }
                    }
                }
            }
        })
    }

    /// A fresh multiplexed connection, never shared, for blocking commands.
    /// `block` is the longest server-side block the caller will ask for; the
    /// response timeout is that plus the normal timeout.
    ///
    /// # Errors
    /// Fails when Redis cannot be reached in time.
    pub async fn dedicated(&self, block: Duration) -> Result<Conn, RedisError> {
        match &*self.backend {
            Backend::Single { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(block + self.timeout));
                Ok(Conn::Plain(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            backend @ Backend::Cluster { .. } => {
                let client = backend.cluster_client(
                    redis::ProtocolVersion::RESP2,
                    block + self.timeout,
                    true,
                )?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(block + self.timeout);
                let conn = tokio::time::timeout(
                    self.timeout,
                    client.get_async_connection_with_config(config),
                )
                .await
                .map_err(|_| RedisError::Timeout)??;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// A fresh RESP3 connection of its own (never shared) whose pushes —
    /// pub/sub messages, and a disconnection notice — go to `sender`.
    /// redis-rs calls the sender from its connection task, so the sender must
    /// not block: the gateway's subscriber gives it a bounded queue.
    ///
    /// # Errors
    /// Fails when Redis cannot be reached within the timeout.
    pub async fn push_connection(
        &self,
        sender: impl redis::aio::AsyncPushSender,
    ) -> Result<PushConn, RedisError> {
        let connect = async {
            match &*self.backend {
                Backend::Single { push_client, .. } => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_push_sender(sender);
                    push_client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map(PushConn::Single)
                        .map_err(RedisError::from)
                }
                backend @ Backend::Cluster { .. } => {
                    let client = backend.cluster_client(
                        redis::ProtocolVersion::RESP3,
                        self.timeout,
                        true,
                    )?;
                    let config = redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(self.timeout)
                        .set_response_timeout(self.timeout)
                        .set_push_sender(sender);
                    client
                        .get_async_connection_with_config(config)
                        .await
                        .map(PushConn::Cluster)
                        .map_err(RedisError::from)
                }
            }
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| RedisError::Timeout)?
    }
}

/// A connection whose pub/sub messages arrive as pushes
/// ([`RedisHandle::push_connection`]).
pub enum PushConn {
    /// A single Redis: `SUBSCRIBE`.
    Single(redis::aio::MultiplexedConnection),
    /// A cluster: sharded `SSUBSCRIBE`, which redis-rs re-issues on the node
    /// that owns the channel's slot after a failover or a slot move.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for PushConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "PushConn::Single",
            Self::Cluster(_) => "PushConn::Cluster",
        })
    }
}

impl PushConn {
    /// Subscribes to `channel` (sharded on a cluster, matching
    /// [`RedisHandle::publish_command`]).
    ///
    /// # Errors
    /// Fails when Redis refuses or does not answer.
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), RedisError> {
        match self {
            Self::Single(c) => c.subscribe(channel).await?,
            Self::Cluster(c) => c.ssubscribe(channel).await?,
        }
        Ok(())
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
