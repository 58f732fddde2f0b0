//! Webhook options (`WEBHOOK_*`), flattened into the worker's configuration,
//! and the secret that signs each request (its keys are
//! [`chat_shared::signing`]'s).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use chat_shared::signing::Keys;
pub use chat_shared::signing::Secret;

/// Default timeout of one webhook request, in milliseconds.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Default number of attempts per batch before it is dropped.
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Default longest pause between two attempts, in milliseconds.
pub(crate) const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// Default cap of records waiting per shard outbox.
pub(crate) const DEFAULT_QUEUE_MAX: u64 = 100_000;
/// Default most records per request.
pub(crate) const DEFAULT_BATCH_MAX: u64 = 100;

/// Signed outgoing webhooks: every persisted record of every room, POSTed
/// in batches, at least once and in order per room.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// URL the worker POSTs persisted room events to (`http://` or
    /// `https://`); unset = no webhooks.
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Signing secret; required with `WEBHOOK_URL`. `X-Chat-Signature` is
    /// keyed with it as given; `webhook-signature` (Standard Webhooks) with
    /// the base64-decoded rest of a `whsec_<base64>` secret, else with it as
    /// given. Missing with `WEBHOOK_URL`, or `whsec_` followed by invalid
    /// base64, exits with 64.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,

    /// File holding the webhook secret (trailing newline ignored), instead of
    /// `WEBHOOK_SECRET`.
    #[arg(long, env = "WEBHOOK_SECRET_FILE", conflicts_with = "webhook_secret")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Timeout of one webhook request, connecting included, in milliseconds
    /// (1–600000).
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = DEFAULT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub webhook_timeout_ms: u64,

    /// Attempts per batch (the first included); after the last one fails the
    /// batch is dropped and counted (`reason="gave_up"`).
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_max_attempts: u32,

    /// Longest pause between two attempts, in milliseconds (pauses start at
    /// 250 ms, or this if smaller, and double). With the defaults a batch is
    /// given up after about 92 s of pauses plus at most 50 s of timeouts.
    #[arg(long, env = "WEBHOOK_BACKOFF_MAX_MS", default_value_t = DEFAULT_BACKOFF_MAX_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_backoff_max_ms: u64,

    /// Most records waiting per shard outbox (`chat:webhooks:{shard-<n>}`);
    /// records persisted while it is full are dropped and counted
    /// (`reason="queue_full"`).
    #[arg(long, env = "WEBHOOK_QUEUE_MAX", default_value_t = DEFAULT_QUEUE_MAX, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_queue_max: u64,

    /// Most records per request (1–10000).
    #[arg(long, env = "WEBHOOK_BATCH_MAX", default_value_t = DEFAULT_BATCH_MAX, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub webhook_batch_max: u64,
}

impl WebhookArgs {
    /// Checks that a URL comes with an HTTP scheme and a usable secret (a
    /// secret file is read and a `whsec_` secret decoded here, so a bad one
    /// stops start-up with 64).
    ///
    /// # Errors
    /// A message naming the option at fault.
    pub fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.webhook_url else {
            return Ok(());
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "WEBHOOK_URL={url} must start with http:// or https://"
            ));
        }
        match self.secret()? {
            Some(secret) => Keys::new(&secret).map(drop),
            None => Err("WEBHOOK_URL needs WEBHOOK_SECRET or WEBHOOK_SECRET_FILE".into()),
        }
    }

    /// The secret, read from `WEBHOOK_SECRET_FILE` when given there.
    ///
    /// # Errors
    /// When the file cannot be read or holds an empty secret.
    pub fn secret(&self) -> Result<Option<Secret>, String> {
        let secret = match (&self.webhook_secret, &self.webhook_secret_file) {
            (Some(s), _) => s.clone(),
            (None, Some(path)) => {
                let raw = std::fs::read_to_string(path)
                    .map_err(|e| format!("WEBHOOK_SECRET_FILE={}: {e}", path.display()))?;
                Secret::new(raw.trim_end_matches(['\r', '\n']))
            }
            (None, None) => return Ok(None),
        };
        if secret.is_empty() {
            return Err("the webhook secret is empty".into());
        }
        Ok(Some(secret))
    }

    /// Timeout of one request.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }

    /// Longest pause between attempts.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.webhook_backoff_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        webhook: WebhookArgs,
    }

    fn validate(secret: &str) -> Result<(), String> {
        let args = [
            "w",
            "--webhook-url",
            "http://h/",
            "--webhook-secret",
            secret,
        ];
        Cli::try_parse_from(args).unwrap().webhook.validate()
    }

    #[test]
    fn a_whsec_secret_must_be_base64() {
        assert_eq!(validate("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Ok(()));
        assert_eq!(validate("plain secret, any bytes"), Ok(()));
        let e = validate("whsec_???").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
    }

    #[test]
    fn a_whsec_secret_file_is_checked_too() {
        let path = std::env::temp_dir().join(format!("whsec-{}", std::process::id()));
        std::fs::write(&path, "whsec_???\n").unwrap();
        let args = ["w", "--webhook-url", "http://h/", "--webhook-secret-file"];
        let cli = Cli::try_parse_from(args.iter().copied().chain([path.to_str().unwrap()]));
        let e = cli.unwrap().webhook.validate().unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("not base64"), "{e}");
    }
}
