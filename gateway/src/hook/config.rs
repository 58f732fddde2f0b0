//! The `PUBLISH_HOOK_*` options, flattened into the gateway's configuration.

use std::time::Duration;

use chat_shared::signing::{Keys, Secret};
use clap::Args;

/// Default time the hook has to answer, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
/// Default number of hook requests in flight at once on one gateway.
pub const DEFAULT_CONCURRENCY: u64 = 64;

/// The pre-publish hook: the application's say on every message and edit
/// before it is stored. Off unless `PUBLISH_HOOK_URL` is set.
#[derive(Debug, Clone, Args)]
pub struct HookArgs {
    /// URL (`http://` or `https://`) the gateway POSTs each message and edit
    /// to before storing it; the answer accepts, rejects or modifies it (see
    /// docs/publish-hook.md). Unset = no hook.
    #[arg(long, env = "PUBLISH_HOOK_URL")]
    pub publish_hook_url: Option<String>,

    /// Signing secret of the hook's requests (Standard Webhooks headers);
    /// required with `PUBLISH_HOOK_URL`. A `whsec_<base64>` secret is
    /// base64-decoded to the HMAC key, any other value is the key as given.
    /// Missing, empty, or `whsec_` followed by invalid base64 exits with 64.
    #[arg(long, env = "PUBLISH_HOOK_SECRET", hide_env_values = true)]
    pub publish_hook_secret: Option<Secret>,

    /// Time a message waits for the hook's verdict, in milliseconds
    /// (1–60000): a free request slot, then the request and its answer. Past
    /// it the call counts as a timeout (see `PUBLISH_HOOK_FAIL_OPEN`).
    #[arg(long, env = "PUBLISH_HOOK_TIMEOUT_MS", default_value_t = DEFAULT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub publish_hook_timeout_ms: u64,

    /// What a timeout, a non-2xx status or a malformed answer of the hook
    /// means: `false` refuses the message with `unavailable` (the client
    /// resends it), `true` stores it unchanged (`true`/`false`, also `1`/`0`).
    #[arg(long, env = "PUBLISH_HOOK_FAIL_OPEN", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub publish_hook_fail_open: bool,

    /// Hook requests in flight at once on this gateway (1–10000); a message
    /// that finds no free slot within `PUBLISH_HOOK_TIMEOUT_MS` counts as a
    /// timeout.
    #[arg(long, env = "PUBLISH_HOOK_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub publish_hook_concurrency: u64,
}

impl HookArgs {
    /// The URL and signing keys when the hook is on; `None` when
    /// `PUBLISH_HOOK_URL` is unset.
    ///
    /// # Errors
    /// A message naming the option at fault (never the secret): a URL that
    /// is not `http://` or `https://`, a missing or empty secret, a `whsec_`
    /// secret that is not base64.
    pub fn endpoint(&self) -> Result<Option<(reqwest::Url, Keys)>, String> {
        let Some(url) = &self.publish_hook_url else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| format!("PUBLISH_HOOK_URL {url:?} is not an http:// or https:// URL"))?;
        let secret = match &self.publish_hook_secret {
            Some(s) if !s.is_empty() => s,
            _ => return Err("PUBLISH_HOOK_URL needs PUBLISH_HOOK_SECRET (not empty)".into()),
        };
        let keys = Keys::new(secret).map_err(|e| format!("PUBLISH_HOOK_SECRET: {e}"))?;
        Ok(Some((url, keys)))
    }

    /// The longest wait for a verdict.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.publish_hook_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        hook: HookArgs,
    }

    fn endpoint(args: &[&str]) -> Result<bool, String> {
        let cli = Cli::try_parse_from(std::iter::once("g").chain(args.iter().copied())).unwrap();
        cli.hook.endpoint().map(|e| e.is_some())
    }

    #[test]
    fn off_without_a_url_and_defaults_are_documented_values() {
        assert_eq!(endpoint(&[]), Ok(false));
        let cli = Cli::try_parse_from(["g"]).unwrap();
        assert_eq!(cli.hook.timeout(), Duration::from_millis(500));
        assert!(!cli.hook.publish_hook_fail_open);
        assert_eq!(cli.hook.publish_hook_concurrency, 64);
    }

    #[test]
    fn a_url_needs_a_usable_secret() {
        let url = ["--publish-hook-url", "http://127.0.0.1:9/hook"];
        let e = endpoint(&url).unwrap_err();
        assert!(e.contains("PUBLISH_HOOK_SECRET"), "{e}");
        let with = |secret: &'static str| {
            let mut args = url.to_vec();
            args.extend(["--publish-hook-secret", secret]);
            endpoint(&args)
        };
        assert_eq!(with("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), Ok(true));
        assert_eq!(with("any bytes at all"), Ok(true));
        assert!(with("").is_err());
        let e = with("whsec_not*base64").unwrap_err();
        assert!(e.contains("not base64") && !e.contains("not*base64"), "{e}");
    }

    #[test]
    fn the_url_must_be_http() {
        let e = endpoint(&[
            "--publish-hook-url",
            "ftp://h/x",
            "--publish-hook-secret",
            "s",
        ])
        .unwrap_err();
        assert!(e.contains("PUBLISH_HOOK_URL"), "{e}");
    }
}
