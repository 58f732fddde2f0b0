//! Redis connection set-up.
//!
//! Short commands share a deadpool of multiplexed connections. Blocking reads
//! (`XREADGROUP … BLOCK`) and pub/sub each need a connection of their own, so
//! [`RedisHandle::dedicated`] and [`RedisHandle::pubsub`] open fresh ones that
//! never enter the pool.

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use redis::AsyncConnectionConfig;

use crate::config::RedisArgs;

/// The pool plus what is needed to open dedicated connections.
#[derive(Clone)]
pub struct RedisHandle {
    /// Shared multiplexed connections for short commands.
    pub pool: Pool,
    client: redis::Client,
    timeout: Duration,
}

impl std::fmt::Debug for RedisHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHandle")
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
    /// A connection could not be taken from the pool or opened.
    #[error("redis connection: {0}")]
    Pool(String),
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
            Self::Pool(_) => "connection",
            Self::Command(_) => "command",
            Self::Timeout => "timeout",
        }
    }
}

impl RedisHandle {
    /// Builds the pool; no connection is opened until first use.
    ///
    /// # Errors
    /// Fails when the URL is invalid.
    pub fn new(args: &RedisArgs) -> Result<Self, RedisError> {
        let url = args.normalized_url();
        let timeout = args.timeout();
        let client = redis::Client::open(url.as_str()).map_err(RedisError::Url)?;
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let manager = deadpool_redis::Manager::new_with_config(url.as_str(), conn_config)
            .map_err(RedisError::Url)?;
        let pool = Pool::builder(manager)
            .max_size(args.redis_pool_size.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| RedisError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            client,
            timeout,
        })
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A pooled connection.
    ///
    /// # Errors
    /// Fails when no connection can be had within the timeout.
    pub async fn get(&self) -> Result<deadpool_redis::Connection, RedisError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_redis::PoolError::Timeout(_) => RedisError::Timeout,
            other => RedisError::Pool(other.to_string()),
        })
    }

    /// Runs `cmd` on a pooled connection with the configured timeout.
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        let mut conn = self.get().await?;
        Ok(cmd.query_async(&mut conn).await?)
    }

    /// Runs a pipeline on a pooled connection.
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut conn = self.get().await?;
        Ok(pipe.query_async(&mut conn).await?)
    }

    /// `PING`, for health checks.
    ///
    /// # Errors
    /// Fails when Redis does not answer in time.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let cmd = redis::cmd("PING");
        let fut = self.query::<String>(&cmd);
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| RedisError::Timeout)??;
        Ok(())
    }

    /// A fresh multiplexed connection outside the pool, for blocking commands.
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
