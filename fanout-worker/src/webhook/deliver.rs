//! POSTing one batch: attempts, exponential backoff, and the bound after
//! which the batch is given up.
//!
//! An attempt fails on a non-2xx answer, a transport error, or no answer
//! within `WEBHOOK_TIMEOUT_MS`. The pause after the n-th failure is
//! `min(250 ms · 2^(n-1), WEBHOOK_BACKOFF_MAX_MS)`; after
//! `WEBHOOK_MAX_ATTEMPTS` failures the batch is given up (dropped and
//! counted). With the defaults (10 attempts, 5 s timeout, 30 s cap) a batch
//! is given up after about 1 min 32 s of pauses plus at most 50 s of
//! timeouts. Every wait also ends when the sender must stop (shutdown, or
//! the shard's lease lapses): the batch then stays in the outbox for the
//! next holder.
//!
//! Every attempt carries the batch's `webhook-id` and is signed anew with
//! its own `webhook-timestamp` ([`chat_shared::signing`]); `X-Chat-Signature` depends on the
//! body only and is computed once.

use std::time::Duration;

use chat_shared::envelope::now_us;
use chat_shared::metrics as m;
use chat_shared::signing::{
    self as sign, CHAT_SIGNATURE_HEADER, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use tokio_util::sync::CancellationToken;

use super::body::Batch;
use super::Webhook;
use crate::lease::LeaseClock;

/// First pause after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The receiver answered 2xx.
    Sent,
    /// Every attempt failed; the batch is dropped.
    GaveUp,
    /// The sender must stop before the batch was sent; it stays queued.
    Stopped,
}

/// The pause after the `failures`-th failed attempt (1-based).
pub(crate) fn backoff(failures: u32, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * factor).min(max)
}

/// POSTs `batch` until it is sent, given up, or the sender must stop.
pub(crate) async fn deliver(
    hook: &Webhook,
    batch: &Batch,
    lease: &LeaseClock,
    cancel: &CancellationToken,
) -> Outcome {
    let chat_signature = hook.keys.chat_signature(&batch.body);
    let mut failures = 0;
    loop {
        let attempt = post(hook, batch, &chat_signature);
        let result = tokio::select! {
            r = attempt => r,
            _ = cancel.cancelled() => return Outcome::Stopped,
            _ = lapsed(lease) => return Outcome::Stopped,
        };
        match result {
            Ok(()) => {
                record_sent(batch);
                return Outcome::Sent;
            }
            Err(kind) => {
                metrics::counter!(m::WK_WEBHOOK_REQUESTS_FAILED, "kind" => kind).increment(1);
                failures += 1;
                if failures >= hook.args.webhook_max_attempts {
                    metrics::counter!(m::WK_WEBHOOK_EVENTS_DROPPED, "reason" => "gave_up")
                        .increment(batch.records as u64);
                    tracing::warn!(
                        attempts = failures,
                        records = batch.records,
                        last_error = kind,
                        "Webhook batch given up after its last attempt; records dropped"
                    );
                    return Outcome::GaveUp;
                }
                if failures == 1 {
                    tracing::info!(
                        error = kind,
                        "Webhook request failed; retrying with backoff"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures, hook.args.backoff_max())) => {}
                    _ = cancel.cancelled() => return Outcome::Stopped,
                    _ = lapsed(lease) => return Outcome::Stopped,
                }
                metrics::counter!(m::WK_WEBHOOK_RETRIES).increment(1);
            }
        }
    }
}

/// Resolves once `lease` has lapsed (renewals keep pushing it out).
async fn lapsed(lease: &LeaseClock) {
    while lease.is_valid() {
        tokio::time::sleep(lease.remaining().max(Duration::from_millis(10))).await;
    }
}

/// One attempt, stamped and signed now; `Err` holds the failure's metric label.
async fn post(hook: &Webhook, batch: &Batch, chat_signature: &str) -> Result<(), &'static str> {
    let timestamp = sign::unix_now();
    let answer = hook
        .client
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(CHAT_SIGNATURE_HEADER, chat_signature)
        .header(ID_HEADER, &batch.id)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(
            SIGNATURE_HEADER,
            hook.keys
                .standard_signature(&batch.id, timestamp, &batch.body),
        )
        .body(batch.body.clone())
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            tracing::debug!(status = %r.status(), "Webhook answered with an error status");
            Err("status")
        }
        Err(e) if e.is_timeout() => Err("timeout"),
        Err(e) => {
            tracing::debug!(error = %e, "Webhook request failed");
            Err("transport")
        }
    }
}

fn record_sent(batch: &Batch) {
    metrics::counter!(m::WK_WEBHOOK_REQUESTS_SENT).increment(1);
    metrics::counter!(m::WK_WEBHOOK_EVENTS_SENT).increment(batch.records as u64);
    let latency = metrics::histogram!(m::WK_WEBHOOK_LATENCY_SECONDS);
    let now = now_us();
    for at in &batch.persisted_us {
        latency.record((now - at).max(0) as f64 / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_250_ms_up_to_the_cap() {
        let max = Duration::from_secs(30);
        let ms: Vec<u128> = (1..=10).map(|n| backoff(n, max).as_millis()).collect();
        assert_eq!(
            ms,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(backoff(1000, max), max);
        assert_eq!(
            backoff(1, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
