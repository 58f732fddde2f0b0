//! Redis connection set-up.
//!
//! Short commands share a few auto-reconnecting multiplexed connections
//! (redis-rs `ConnectionManager`), picked round-robin: a multiplexed connection
//! pipelines concurrent commands from many tasks by itself, so under load the
//! gateways' appends coalesce into few writes with no timer at idle. We do not
//! use a checkout pool (deadpool-redis): it sends `UNWATCH`+`PING` on every
//! checkout, which doubled the round trips of every command on the hot path.
//! Blocking reads (`XREADGROUP … BLOCK`) and pub/sub each need a connection of
//! their own, so [`RedisHandle::dedicated`] and [`RedisHandle::pubsub`] open
//! fresh ones that are never shared.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncConnectionConfig;

use crate::config::RedisArgs;

/// Shared connections plus what is needed to open dedicated ones.
#[derive(Clone)]
pub struct RedisHandle {
    shared: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
    client: redis::Client,
    timeout: Duration,
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
            Self::Connection(_) => "connection",
            Self::Command(_) => "command",
            Self::Timeout => "timeout",
        }
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
    /// Fails when the URL is invalid.
    pub fn new(args: &RedisArgs) -> Result<Self, RedisError> {
        let url = args.normalized_url();
        let timeout = args.timeout();
        let client = redis::Client::open(url.as_str()).map_err(RedisError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let shared = (0..args.redis_pool_size.max(1))
            .map(|_| client.get_connection_manager_lazy(config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(RedisError::Url)?;
        Ok(Self {
            shared: shared.into(),
            next: Arc::new(AtomicUsize::new(0)),
            client,
            timeout,
        })
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One of the shared connections (cheap clone), round-robin.
    fn next_shared(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        self.shared[i].clone()
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
        let mut conn = self.next_shared();
        tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .map_err(|_| RedisError::Timeout)?
            .map_err(RedisError::from)
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
        let mut conn = self.next_shared();
        tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| RedisError::Timeout)?
            .map_err(RedisError::from)
    }

    /// Runs `op`, moving on to the next shared connection when one turns out
    /// to be dead (after Redis restarted, each connection learns it on its
    /// next use and reconnects in the background). Only for idempotent
    /// requests: a lost connection can also fail requests Redis already ran,
    /// so non-idempotent ones go through [`Self::query_once`].
    async fn with_retry<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let conn = self.next_shared();
            let result = tokio::time::timeout_at(deadline, op(conn))
                .await
                .map_err(|_| RedisError::Timeout)?;
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

    /// Pings every shared connection once a second until `stop`, so that after
    /// Redis restarts each of them notices and reconnects within a second,
    /// instead of failing the next real request (an append is never retried).
    pub fn spawn_keepalive(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let shared = self.shared.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                for conn in shared.iter() {
                    let mut conn = conn.clone();
                    let cmd = redis::cmd("PING");
                    let _ =
                        tokio::time::timeout(timeout, cmd.query_async::<String>(&mut conn)).await;
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
    pub async fn dedicated(
        &self,
        block: Duration,
    ) -> Result<redis::aio::MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(block + self.timeout));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// A fresh pub/sub connection.
    ///
    /// # Errors
    /// Fails when Redis cannot be reached in time.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, RedisError> {
        tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::Timeout)?
            .map_err(RedisError::from)
    }
}
