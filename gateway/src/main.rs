//! `chat-gateway` binary: parse config, start up, run.

use chat_gateway::GatewayConfig;
use chat_shared::config::parse_or_exit;
use chat_shared::startup::{start, StartSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: GatewayConfig = parse_or_exit();
    let s = start(StartSpec {
        name: "Gateway",
        id: config.gateway_id.as_deref(),
        id_env: "GATEWAY_ID",
        redis: &config.redis,
        log_format: config.log.log_format,
        stream_shards: config.stream_shards,
        listen: format!("{}:{}", config.bind_addr, config.port),
    })
    .await;
    let result = chat_gateway::run(
        config,
        s.id.to_string(),
        s.listener,
        Some(s.metrics),
        s.shutdown,
    )
    .await;
    match result {
        Err(e) if e.is::<chat_gateway::IdInUse>() || e.is::<chat_gateway::ConfigError>() => {
            chat_shared::config::exit_usage(e)
        }
        other => other,
    }
}
