//! Connections of their own, never shared: [`RedisHandle::dedicated`] for
//! blocking reads (`XREADGROUP … BLOCK`) and [`RedisHandle::push_connection`]
//! for pub/sub ([`PushConn`]), on a single Redis or a cluster.

use std::time::Duration;

use redis::AsyncConnectionConfig;

use super::{Backend, Conn, RedisError, RedisHandle};

impl RedisHandle {
    /// A fresh multiplexed connection, never shared, for blocking commands.
    /// `block` is the longest server-side block the caller will ask for; the
    /// response timeout is that plus the normal timeout.
    ///
    /// On a cluster it never re-sends a request that may have run (redis-rs
    /// retries off; [`Conn`] still re-sends a single command a node refused):
    /// the workers read their streams over it, and a read re-sent after its
    /// reply was lost used to leave the entries the first one took in the
    /// reader's pending list, unseen (nemesis cluster seed 3003).
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
                    false,
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
