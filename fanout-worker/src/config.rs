//! Worker configuration: clap flags with env fallbacks.

use std::time::Duration;

use chat_shared::config::{LogArgs, RedisArgs};
use clap::Parser;

pub use crate::webhook::config::{Secret, WebhookArgs};

/// Default port of the worker's `/metrics`, `/livez`, `/readyz` server.
pub const DEFAULT_METRICS_PORT: u16 = 9091;

/// `chat-fanout-worker`: persists chat messages from the Redis stream shards to
/// history, assigns per-room `seq`, and publishes them to the gateways that own
/// connections in each room.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct WorkerConfig {
    /// Identity of this worker, unique per process (default: host name plus a
    /// random suffix).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,

    /// Port of the HTTP server for `/metrics`, `/livez` and `/readyz`. Give
    /// each worker on one host its own.
    #[arg(long, env = "METRICS_PORT", default_value_t = DEFAULT_METRICS_PORT)]
    pub metrics_port: u16,

    /// Address the HTTP server binds to.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: String,

    /// Number of stream shards (1–4096); must be the same on every gateway and
    /// worker (recorded in Redis, a process with another value exits with 64).
    #[arg(long, env = "STREAM_SHARDS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub stream_shards: u32,

    /// Messages kept per room in `messages:{room}` (1–1000000).
    #[arg(long, env = "HISTORY_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub history_limit: u64,

    /// Most bytes of record JSON one room's history keeps (oldest dropped
    /// first, so the list stays contiguous in `seq`); bounds what a room of
    /// huge messages can cost. 0 = no cap.
    #[arg(long, env = "HISTORY_MAX_BYTES", default_value_t = 4_194_304)]
    pub history_max_bytes: u64,

    /// Expiry of a room's history after its last message, in seconds (default 7 days).
    #[arg(long, env = "HISTORY_TTL", default_value_t = 604_800, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_ttl: u64,

    /// Most stream entries read and processed per batch (1–10000).
    #[arg(long, env = "BATCH_SIZE", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,

    /// Longest a blocking stream read waits for new entries, in milliseconds
    /// (10–30000, and less than half of `LEASE_TTL_MS`; otherwise the worker
    /// exits with 64).
    #[arg(long, env = "READ_BLOCK_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=30_000))]
    pub read_block_ms: u64,

    /// Lease time-to-live of a shard, in milliseconds (≥ 1000). A dead worker's shards are
    /// taken over after at most this long.
    #[arg(long, env = "LEASE_TTL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub lease_ttl_ms: u64,

    /// Interval of the janitor's sweep, in milliseconds (≥ 50).
    #[arg(long, env = "JANITOR_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(50..))]
    pub janitor_interval_ms: u64,

    /// Index entries of messages that were never stored (an append that
    /// failed with a Redis error) are removed once their message id is older
    /// than this, in milliseconds (≥ 1000). The janitor checks every half of it.
    #[arg(long, env = "INDEX_PENDING_MAX_AGE_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub index_pending_max_age_ms: u64,

    /// A gateway whose heartbeat is older than this is dead; its connection
    /// entries are removed. In milliseconds (≥ 100).
    #[arg(long, env = "GATEWAY_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub gateway_timeout_ms: u64,

    /// Announce `leave` for the users of a dead gateway whose last connection
    /// to a room the janitor removed. Set it like the gateways'.
    #[arg(long, env = "PRESENCE_EVENTS", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub presence_events: bool,

    /// Seconds to finish in-flight work after SIGTERM before exiting anyway.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub webhook: WebhookArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
}

impl WorkerConfig {
    /// Checks what clap cannot: relations between options.
    ///
    /// # Errors
    /// A message naming the options when `READ_BLOCK_MS` is not well below
    /// `LEASE_TTL_MS`: a shard task looks at its lease, at a pending re-claim
    /// and at shutdown between reads, so a read must end several times per
    /// lease TTL.
    ///
    /// Also when `WEBHOOK_URL` is set without a secret, or is not an
    /// `http://` or `https://` URL.
    pub fn validate(&self) -> Result<(), String> {
        self.webhook.validate()?;
        if self.read_block_ms.saturating_mul(2) >= self.lease_ttl_ms {
            return Err(format!(
                "READ_BLOCK_MS={} must be less than half of LEASE_TTL_MS={}",
                self.read_block_ms, self.lease_ttl_ms
            ));
        }
        Ok(())
    }

    /// Blocking read timeout.
    pub fn read_block(&self) -> Duration {
        Duration::from_millis(self.read_block_ms)
    }

    /// Lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<WorkerConfig, clap::Error> {
        WorkerConfig::try_parse_from(std::iter::once("worker").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(parse(&[]).unwrap().validate(), Ok(()));
        assert!(parse(&[]).unwrap().presence_events);
        assert!(
            !parse(&["--presence-events", "false"])
                .unwrap()
                .presence_events
        );
        assert!(!parse(&["--presence-events", "0"]).unwrap().presence_events);
    }

    #[test]
    fn a_read_block_of_half_the_lease_ttl_or_more_is_refused() {
        let ok = parse(&["--read-block-ms", "4999", "--lease-ttl-ms", "10000"]).unwrap();
        assert_eq!(ok.validate(), Ok(()));
        let bad = parse(&["--read-block-ms", "5000", "--lease-ttl-ms", "10000"]).unwrap();
        let e = bad.validate().unwrap_err();
        assert!(
            e.contains("READ_BLOCK_MS=5000") && e.contains("LEASE_TTL_MS=10000"),
            "{e}"
        );
        assert!(parse(&["--read-block-ms", "9"]).is_err());
        assert!(parse(&["--read-block-ms", "30001"]).is_err());
    }

    #[test]
    fn a_webhook_url_needs_a_secret_and_an_http_scheme() {
        let url = "http://127.0.0.1:9/hook";
        let e = parse(&["--webhook-url", url]).unwrap().validate();
        assert!(e.unwrap_err().contains("WEBHOOK_SECRET"));
        let ok = parse(&["--webhook-url", url, "--webhook-secret", "s3"]).unwrap();
        assert_eq!(ok.validate(), Ok(()));
        let ftp = parse(&["--webhook-url", "ftp://x/", "--webhook-secret", "s"]).unwrap();
        assert!(ftp.validate().unwrap_err().contains("WEBHOOK_URL"));
        let both = ["--webhook-secret", "s", "--webhook-secret-file", "/f"];
        assert!(parse(&both).is_err());
        let missing = [
            "--webhook-url",
            url,
            "--webhook-secret-file",
            "/nonexistent/s",
        ];
        let e = parse(&missing).unwrap().validate().unwrap_err();
        assert!(e.contains("WEBHOOK_SECRET_FILE=/nonexistent/s"), "{e}");
        let empty = ["--webhook-url", url, "--webhook-secret", ""];
        assert!(parse(&empty).unwrap().validate().is_err());
    }
}
