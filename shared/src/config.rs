//! Configuration pieces flattened into both binaries, and the shared parse step.
//!
//! Every option is a clap flag with an env fallback; the doc comments become
//! `--help`. Invalid configuration exits with status 64 (`EX_USAGE`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// Exit status for bad configuration (`EX_USAGE` from sysexits.h).
pub const EX_USAGE: i32 = 64;

/// Default Redis address. The spec's default is `redis:6379` (a compose service
/// name); ours is loopback so a local run works without extra setup.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Where and how to reach Redis.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis address: `host:port` (as in the spec) or a `redis://` / `rediss://` URL
    /// (`rediss` for TLS), optionally with credentials: `redis://:password@host:port`
    /// or `redis://user:password@host:port` for an ACL user.
    ///
    /// A Redis Cluster: `redis+cluster://h1:p1,h2:p2,…` (seed nodes; `rediss+cluster`
    /// for TLS), or a plain URL list with `REDIS_CLUSTER=true`.
    #[arg(long = "redis-url", env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,

    /// Treat `REDIS_URL` (one URL or a comma list of seed nodes) as a Redis
    /// Cluster. Implied by a `redis+cluster://` URL.
    #[arg(long, env = "REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// PEM file of the CA(s) to trust for a `rediss://` URL instead of the system
    /// store, e.g. a private CA.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate (chain) presented to Redis for mutual TLS (`rediss://`);
    /// needs `REDIS_CLIENT_KEY_FILE`.
    #[arg(
        long,
        env = "REDIS_CLIENT_CERT_FILE",
        requires = "redis_client_key_file"
    )]
    pub redis_client_cert_file: Option<PathBuf>,

    /// PEM private key of `REDIS_CLIENT_CERT_FILE`.
    #[arg(
        long,
        env = "REDIS_CLIENT_KEY_FILE",
        requires = "redis_client_cert_file"
    )]
    pub redis_client_key_file: Option<PathBuf>,

    /// Auto-reconnecting multiplexed connections shared by short commands,
    /// round-robin (pub/sub and each worker shard's blocking reads get their own).
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 4)]
    pub redis_pool_size: usize,

    /// Timeout for connecting to Redis and for each command, in milliseconds.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// Replicas that must hold a write before it counts: gateways ack a
    /// message, and workers ack a stream entry after persisting it, only
    /// after `WAIT <n>` confirms it reached this many replicas (0 = ack once
    /// the master has it, Redis's asynchronous replication). Set the same on
    /// gateways and workers.
    #[arg(long, env = "ACK_AFTER_REPLICAS", default_value_t = 0)]
    pub ack_after_replicas: u32,

    /// How long `WAIT` may take for `ACK_AFTER_REPLICAS`, in milliseconds; a
    /// write that reaches fewer replicas in time is not acked (`unavailable`:
    /// resend with the same `client_id`).
    #[arg(long, env = "ACK_REPLICAS_TIMEOUT_MS", default_value_t = 1000)]
    pub ack_replicas_timeout_ms: u64,
}

impl RedisArgs {
    /// The URL with the spec's bare `host:port` form turned into `redis://host:port`.
    pub fn normalized_url(&self) -> String {
        normalize_redis_url(&self.redis_url)
    }

    /// The seed node URLs when `REDIS_URL` names a Redis Cluster, else `None`.
    pub fn cluster_nodes(&self) -> Option<Vec<String>> {
        cluster_nodes(&self.redis_url, self.redis_cluster)
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }

    /// The replica acknowledgement writes wait for, if any.
    pub fn replica_ack(&self) -> Option<ReplicaAck> {
        (self.ack_after_replicas > 0).then_some(ReplicaAck {
            replicas: self.ack_after_replicas,
            timeout_ms: self.ack_replicas_timeout_ms,
        })
    }
}

/// `ACK_AFTER_REPLICAS`: a write counts once `replicas` replicas hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAck {
    /// Replicas that must confirm.
    pub replicas: u32,
    /// How long `WAIT` may block, in milliseconds.
    pub timeout_ms: u64,
}

impl ReplicaAck {
    /// Adds `WAIT` to `pipe`, right after the write it must cover (on a
    /// cluster, a keyless command joins the previous command's slot run, so
    /// it waits on the node that took the write).
    pub fn add_wait(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("WAIT").arg(self.replicas).arg(self.timeout_ms);
    }
}

/// Turns `host:port` into `redis://host:port`; URLs pass unchanged.
pub fn normalize_redis_url(raw: &str) -> String {
    let raw = raw.trim();
    if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("redis://{raw}")
    }
}

/// Splits a cluster `REDIS_URL` into seed node URLs:
/// `redis+cluster://[user:pw@]h1:p1,h2:p2` → `redis://[user:pw@]h1:p1`,
/// `redis://[user:pw@]h2:p2`; with `forced`, a plain URL or comma list counts
/// as a cluster too. `None` for a single Redis.
pub fn cluster_nodes(raw: &str, forced: bool) -> Option<Vec<String>> {
    let raw = raw.trim();
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("redis", raw),
    };
    let scheme = match scheme.strip_suffix("+cluster") {
        Some(base) => base,
        None if forced => scheme,
        None => return None,
    };
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    Some(
        hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                let h = h.split_once("://").map_or(h, |(_, h)| h);
                format!("{scheme}://{userinfo}{h}")
            })
            .collect(),
    )
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging options; the filter itself comes from `RUST_LOG` (default `info`).
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format: human-readable lines, or one JSON object per line.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Parses `T` from the command line and environment.
///
/// `--help` and `--version` print and exit 0; any error prints clap's message
/// and exits with [`EX_USAGE`].
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(v) => v,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(EX_USAGE);
        }
        Err(e) => e.exit(),
    }
}

/// Prints a configuration error and exits with [`EX_USAGE`].
pub fn exit_usage(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(EX_USAGE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_become_seed_nodes() {
        assert_eq!(cluster_nodes("redis://a:1", false), None);
        assert_eq!(
            cluster_nodes("redis+cluster://a:1,b:2", false).unwrap(),
            ["redis://a:1", "redis://b:2"]
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://u:p@a:1,b:2/", false).unwrap(),
            ["rediss://u:p@a:1", "rediss://u:p@b:2"]
        );
        assert_eq!(
            cluster_nodes("redis://a:1,redis://b:2", true).unwrap(),
            ["redis://a:1", "redis://b:2"]
        );
        assert_eq!(cluster_nodes("a:1", true).unwrap(), ["redis://a:1"]);
    }

    #[test]
    fn bare_host_port_becomes_url() {
        assert_eq!(normalize_redis_url("redis:6379"), "redis://redis:6379");
        assert_eq!(normalize_redis_url("redis://a:1/2"), "redis://a:1/2");
        assert_eq!(normalize_redis_url("rediss://a:1"), "rediss://a:1");
    }
}
