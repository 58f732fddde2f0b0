//! The start-up steps both binaries share, so each `main` stays a thin shell:
//! logging, process identity, the `STREAM_SHARDS` guard, the metrics recorder,
//! the listener and the signal handler. Configuration errors exit with 64,
//! including credentials Redis refuses at start-up; an unreachable Redis does
//! not stop the start (readiness stays 503 until it answers).

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{exit_usage, LogFormat, RedisArgs};
use crate::ids::ProcessId;
use crate::metrics::Exporter;
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
    let redis = RedisHandle::new(spec.redis).unwrap_or_else(|e| exit_usage(e));
    match redis.claim_stream_shards(spec.stream_shards).await {
        Ok(None) => {}
        Ok(Some(recorded)) => exit_usage(format!(
            "STREAM_SHARDS={} but this deployment uses {recorded} (Redis key {}); every process must use the same value",
            spec.stream_shards,
            crate::keys::STREAM_SHARDS
        )),
        Err(e) if e.is_auth_failure() => exit_usage(format!(
            "Redis refused the credentials in REDIS_URL or their permissions: {e}"
        )),
        Err(e) => tracing::warn!(error = %e, "Cannot check STREAM_SHARDS against Redis now; continuing"),
    }
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
