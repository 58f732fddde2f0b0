//! One connection to Redis, to a single server or to a cluster, usable
//! wherever redis-rs takes a connection.
//!
//! On a cluster, redis-rs sends a pipeline to one slot only. [`Conn`] cuts a
//! pipeline into runs of consecutive commands of one slot
//! ([`crate::redis::cluster::command_slot`]) and sends the runs one after the
//! other: every command still runs after the ones before it, as on a single
//! server, at the price of one round trip per run. (A pipeline is not atomic
//! on a single server either; a `MULTI` transaction is passed through and
//! must touch one slot.)
//!
//! The cluster connection that carries requests which must not run twice
//! (appends, [`super::RedisHandle::pipe_once`]) is built with redis-rs
//! retries off: redis-rs would otherwise re-send a request after a dropped
//! connection, or re-send a whole slot run when one of its replies is a
//! redirect or `TRYAGAIN`/`CLUSTERDOWN` while another command of the run
//! already ran. Here a run is re-sent only when Redis surely did not run it:
//! it is a single command and the node refused it ([`refused_unrun`]).
//! Anything else fails the request, and the caller treats every command
//! from the failed run on as maybe stored, never as stored.

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::redis::cluster::command_slot;

/// A shared or dedicated connection to a single Redis or a cluster.
#[derive(Clone)]
pub enum Conn {
    /// A single Redis, reconnecting by itself (the shared connections).
    Managed(ConnectionManager),
    /// A single Redis, one multiplexed connection (blocking reads).
    Plain(MultiplexedConnection),
    /// A Redis Cluster: connections to every master, routed by slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Managed(_) => "Conn::Managed",
            Self::Plain(_) => "Conn::Plain",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The command that publishes to a gateway's delivery channel on this
    /// connection (see [`publish_command`]).
    pub fn publish_command(&self) -> &'static str {
        publish_command(self.is_cluster())
    }
}

/// The command that publishes to a gateway's delivery channel: sharded
/// `SPUBLISH` on a cluster (the message goes only to the node owning the
/// channel's slot), `PUBLISH` on a single Redis.
pub fn publish_command(cluster: bool) -> &'static str {
    if cluster {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}

/// The `start..end` ranges of consecutive commands of one slot (a keyless
/// command joins the run it is in).
fn slot_runs(cmds: &[&Cmd]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < cmds.len() {
        let mut slot = command_slot(cmds[start]);
        let mut end = start + 1;
        while end < cmds.len() {
            match (slot, command_slot(cmds[end])) {
                (_, None) => {}
                (None, Some(s)) => slot = Some(s),
                (Some(a), Some(b)) if a == b => {}
                _ => break,
            }
            end += 1;
        }
        runs.push((start, end));
        start = end;
    }
    runs
}

/// Whether `e` is a node's refusal to run a command at all: a redirect, a
/// cluster that is down, a node loading or not a master. A refused single
/// command did not run and may be sent again; in a run of several commands,
/// others may have run before the refusal (cluster state can change between
/// two commands of a pipeline), so the run is not re-sent.
pub fn refused_unrun(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind as K;
    matches!(
        e.kind(),
        redis::ErrorKind::Server(
            K::Moved
                | K::Ask
                | K::TryAgain
                | K::ClusterDown
                | K::MasterDown
                | K::BusyLoading
                | K::ReadOnly
        )
    )
}

/// How often a refused single command is sent again (the cluster client
/// refreshes its slot map after a redirect), and the pause before each.
const RESENDS: u32 = 8;
const RESEND_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Sends one slot run (`pipeline`'s commands `offset..offset + count`),
/// sending it again while it is a single command that a node refused.
async fn send_run(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> redis::RedisResult<Vec<Value>> {
    let single = pipeline.len() == 1 && !pipeline.is_transaction();
    let mut attempt = 0;
    loop {
        match conn.req_packed_commands(pipeline, offset, count).await {
            Err(e) if single && attempt < RESENDS && refused_unrun(&e) => {
                attempt += 1;
                tokio::time::sleep(RESEND_PAUSE * attempt).await;
            }
            other => return other,
        }
    }
}

/// Sends one command, sending it again while a node refuses it.
async fn send_command(conn: &mut ClusterConnection, cmd: &Cmd) -> redis::RedisResult<Value> {
    let mut attempt = 0;
    loop {
        match conn.req_packed_command(cmd).await {
            Err(e) if attempt < RESENDS && refused_unrun(&e) => {
                attempt += 1;
                tokio::time::sleep(RESEND_PAUSE * attempt).await;
            }
            other => return other,
        }
    }
}

/// Sends `pipeline`'s commands `offset..offset + count` to the cluster in
/// runs of one slot each, in order; returns every reply, in order. A failed
/// run fails the whole request: the runs before it ran, it and the runs
/// after it may or may not have.
async fn split_by_slot(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> redis::RedisResult<Vec<Value>> {
    if pipeline.is_transaction() {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let runs = slot_runs(&cmds);
    if runs.len() <= 1 {
        // One slot (the common case): the pipeline as it is, uncopied.
        return send_run(conn, pipeline, offset, count).await;
    }
    let mut replies = Vec::with_capacity(cmds.len());
    for (start, end) in runs {
        let mut run = redis::pipe();
        for cmd in &cmds[start..end] {
            run.add_command((*cmd).clone());
        }
        replies.extend(send_run(conn, &run, 0, end - start).await?);
    }
    Ok(replies.into_iter().skip(offset).take(count).collect())
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => Box::pin(send_command(c, cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => Box::pin(split_by_slot(c, pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
