//! `chat-fanout-worker` binary: parse config, start up, run.

use chat_fanout_worker::WorkerConfig;
use chat_shared::config::{exit_usage, parse_or_exit};
use chat_shared::startup::{start, StartSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `release-held --shard <n>`: an operator's command, not the service.
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("release-held") {
        std::process::exit(chat_fanout_worker::release::main(args).await);
    }
    let config: WorkerConfig = parse_or_exit();
    config.validate().unwrap_or_else(|e| exit_usage(e));
    let s = start(StartSpec {
        name: "Worker HTTP",
        id: config.worker_id.as_deref(),
        id_env: "WORKER_ID",
        redis: &config.redis,
        log_format: config.log.log_format,
        stream_shards: config.stream_shards,
        listen: format!("{}:{}", config.bind_addr, config.metrics_port),
    })
    .await;
    chat_fanout_worker::run(
        config,
        s.id.to_string(),
        s.listener,
        Some(s.metrics),
        s.shutdown,
    )
    .await
}
