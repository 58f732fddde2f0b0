//! The start-up steps both binaries share, so each `main` stays a thin shell:
//! logging, process identity, the `STREAM_SHARDS` guard, the metrics recorder,
//! the listener and the signal handler. Configuration errors exit with 64,
//! including credentials Redis refuses at start-up.
//!
//! The `STREAM_SHARDS` guard is mandatory: a process with another shard count
//! would append a room to another stream, or read a room's entries from two
//! streams, and the persistence script would then take one stream's entries
//! for duplicates of the other's. While Redis does not answer, start-up waits
//! (retrying with backoff, logging each attempt) and neither listens nor
//! serves; once Redis answers, a mismatch exits with 64.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{exit_usage, LogFormat, RedisArgs};
use crate::metrics::Exporter;
use crate::model::ids::ProcessId;
use crate::redis::RedisHandle;

/// What a binary needs to know to start.
#[derive(Debug)]
pub struct StartSpec<'a> {
    /// Name used in log lines, e.g. `Gateway`.
    pub name: &'static str,
    /// The configured identity, if any.
    pub id: Option<&'a str>,
    /// Env name of the identity, for the error message.
    pub id_env: &'static str,
    /// Redis options.
    pub redis: &'a RedisArgs,
    /// Log format.
    pub log_format: LogFormat,
    /// This process's `STREAM_SHARDS`.
    pub stream_shards: u32,
    /// Address to listen on, `host:port`.
    pub listen: String,
}

/// Everything `run` takes besides the configuration.
#[derive(Debug)]
pub struct Started {
    /// This process's identity.
    pub id: ProcessId,
    /// Renders `/metrics`.
    pub metrics: Exporter,
    /// The bound HTTP listener.
    pub listener: TcpListener,
    /// Cancelled on SIGTERM or SIGINT.
    pub shutdown: CancellationToken,
}

/// First pause between attempts to reach Redis for the shard guard.
const GUARD_FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between those attempts.
const GUARD_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Records this process's `STREAM_SHARDS` in Redis, or checks it against the
/// recorded one; waits until Redis answers. Exits with 64 on a mismatch or
/// refused credentials.
async fn check_stream_shards(redis: &RedisHandle, shards: u32) {
    let mut backoff = GUARD_FIRST_BACKOFF;
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        match redis.claim_stream_shards(shards).await {
            Ok(None) => {
                if attempts > 1 {
                    tracing::info!(attempts, "STREAM_SHARDS checked against Redis");
                }
                return;
            }
            Ok(Some(recorded)) => exit_usage(format!(
                "STREAM_SHARDS={shards} but this deployment uses {recorded} (Redis key {}); every process must use the same value (to reshard, see the README)",
                crate::redis::keys::STREAM_SHARDS
            )),
            Err(e) if e.is_auth_failure() => exit_usage(format!(
                "Redis refused the credentials in REDIS_URL or their permissions: {e}"
            )),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    attempts,
                    retry_in_ms = backoff.as_millis() as u64,
                    "Cannot check STREAM_SHARDS against Redis yet; not serving until it answers"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(GUARD_MAX_BACKOFF);
            }
        }
    }
}

/// Runs the shared start-up steps; exits the process on bad configuration.
pub async fn start(spec: StartSpec<'_>) -> Started {
    crate::telemetry::init(spec.log_format);
    let id = match spec.id {
        Some(raw) => ProcessId::parse(raw).unwrap_or_else(|_| {
            exit_usage(format!(
                "{} must be 1-64 characters of [A-Za-z0-9_.-]",
                spec.id_env
            ))
        }),
        None => ProcessId::generate(),
    };
    if spec.redis.cluster_nodes().is_some() {
        // Before any key is built: shard keys carry slot-spread tags.
        crate::redis::cluster::spread_shard_tags(spec.stream_shards);
    }
    let redis = RedisHandle::new(spec.redis).unwrap_or_else(|e| exit_usage(e));
    check_stream_shards(&redis, spec.stream_shards).await;
    let metrics = crate::metrics::install().unwrap_or_else(|e| {
        eprintln!("error: cannot install the metrics recorder: {e}");
        std::process::exit(70);
    });
    let listener = TcpListener::bind(&spec.listen)
        .await
        .unwrap_or_else(|e| exit_usage(format!("cannot bind {}: {e}", spec.listen)));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, id = %id, "{} listening", spec.name);
    }
    Started {
        id,
        metrics,
        listener,
        shutdown: crate::shutdown::on_signal(),
    }
}
