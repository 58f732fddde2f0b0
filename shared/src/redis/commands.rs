//! Small commands both binaries use (`PING`, `SSCAN` pages, the eviction
//! policy check, the recorded `STREAM_SHARDS`) and the keepalive that makes
//! every shared connection notice a Redis restart within a second.

use std::time::Duration;

use super::{Conn, RedisError, RedisHandle};

impl RedisHandle {
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
                    .arg(crate::redis::keys::STREAM_SHARDS)
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
}
