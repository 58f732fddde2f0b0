//! `chat-fanout-worker` binary: parse config, set up logging and metrics, bind, run.

use chat_fanout_worker::WorkerConfig;
use chat_shared::config::{exit_usage, parse_or_exit};
use chat_shared::ids::ProcessId;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: WorkerConfig = parse_or_exit();
    chat_shared::telemetry::init(config.log.log_format);
    let worker_id = match &config.worker_id {
        Some(id) => ProcessId::parse(id)
            .unwrap_or_else(|_| exit_usage("WORKER_ID must be 1-64 characters of [A-Za-z0-9_.-]")),
        None => ProcessId::generate(),
    };
    let redis =
        chat_shared::redis::RedisHandle::new(&config.redis).unwrap_or_else(|e| exit_usage(e));
    match redis.claim_stream_shards(config.stream_shards).await {
        Ok(None) => {}
        Ok(Some(recorded)) => exit_usage(format!(
            "STREAM_SHARDS={} but this deployment uses {recorded} (Redis key chat:config:stream-shards); every process must use the same value",
            config.stream_shards
        )),
        Err(e) => tracing::warn!(error = %e, "Cannot check STREAM_SHARDS against Redis now; continuing"),
    }
    drop(redis);
    let metrics = chat_shared::metrics::install()?;
    let addr = format!("{}:{}", config.bind_addr, config.metrics_port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| exit_usage(format!("cannot bind {addr}: {e}")));
    tracing::info!(addr = %listener.local_addr()?, "Worker HTTP listening");
    let shutdown = chat_shared::shutdown::on_signal();
    chat_fanout_worker::run(
        config,
        worker_id.to_string(),
        listener,
        Some(metrics),
        shutdown,
    )
    .await
}
