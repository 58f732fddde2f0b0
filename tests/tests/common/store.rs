//! The Redis a test runs against, single server or 3-master cluster, behind
//! one type: the fault tests of issue 3 run unchanged on both.

use chat_shared::redis::Conn;
use redis::AsyncCommands;
use serde_json::Value;

use super::cluster::RedisCluster;
use super::Redis;

/// Which Redis a test starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One `redis-server`.
    Single,
    /// Three `redis-server --cluster-enabled yes` masters, no replicas.
    Cluster,
}

/// A started Redis of either topology.
pub enum Store {
    Single(Box<Redis>),
    Cluster(RedisCluster),
}

impl Store {
    /// Starts a Redis of `topology` on free loopback ports.
    pub async fn start(topology: Topology) -> Self {
        match topology {
            Topology::Single => Self::Single(Box::new(Redis::start().await)),
            Topology::Cluster => Self::Cluster(RedisCluster::start(3, 0).await),
        }
    }

    /// The services' `REDIS_URL`.
    pub fn url(&self) -> String {
        match self {
            Self::Single(r) => r.url(),
            Self::Cluster(c) => c.url(),
        }
    }

    /// A connection for assertions; on a cluster, commands are routed by slot.
    pub async fn conn(&self) -> Conn {
        match self {
            Self::Single(r) => Conn::Plain(r.conn().await),
            Self::Cluster(c) => Conn::Cluster(c.conn().await),
        }
    }

    /// The key of stream shard `shard`'s lease when the services run with
    /// `shards` shards: on a cluster the shard tags are spread over the slots.
    pub fn lease_key(&self, shard: u32, shards: u32) -> String {
        let tag = match self {
            Self::Single(_) => format!("shard-{shard}"),
            Self::Cluster(_) => chat_shared::cluster::spread_tag(shard, shards),
        };
        format!("chat:lease:{{{tag}}}")
    }

    /// The owner of each stream shard's lease (`None`: not held) when the
    /// services run with `shards` shards, read over a new connection.
    pub async fn lease_owners(&self, shards: u32) -> redis::RedisResult<Vec<Option<String>>> {
        let mut c = self.conn().await;
        let mut owners = Vec::new();
        for shard in 0..shards {
            let key = self.lease_key(shard, shards);
            owners.push(c.get::<_, Option<String>>(key).await?);
        }
        Ok(owners)
    }

    /// The records of `messages:<room>`, parsed, oldest first.
    pub async fn stored_records(&self, room: &str) -> Vec<Value> {
        match self {
            Self::Single(r) => super::stored_records(r, room).await,
            Self::Cluster(c) => c.stored_records(room).await,
        }
    }
}
