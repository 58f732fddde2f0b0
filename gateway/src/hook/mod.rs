//! The pre-publish hook: with `PUBLISH_HOOK_URL` set, the application sees
//! every message and edit before it is stored, and accepts, rejects or
//! rewrites it (spam filters, profanity rules, bots that rewrite commands).
//!
//! # Where it runs
//! In the append itself (`delivery::append::append_batch`, its
//! `delivery::screen` stage), the one function every door goes through to
//! store a message or room event: a WebSocket connection's appender, the
//! HTTP publish API, and any later transport. No door can store a message
//! the hook has not seen. Deletes and reactions carry no text and are not
//! sent. How a connection's pipelined messages keep their send order
//! through the hook (all of a batch asked at once, the batch stored in its
//! order once every answer is in) is explained in `delivery::screen`.
//!
//! # Bounds and failures
//! At most `PUBLISH_HOOK_CONCURRENCY` requests are in flight per gateway (a
//! semaphore). A message waits at most `PUBLISH_HOOK_TIMEOUT_MS` for its
//! verdict, the wait for a slot included. A timeout, a transport error, a
//! non-2xx status or a malformed answer fails closed (`unavailable`: the
//! client resends, as after a Redis error) unless `PUBLISH_HOOK_FAIL_OPEN`
//! is set (stored unchanged). Every call counts one outcome in
//! `chat_gateway_publish_hook_outcomes_total` and its time in
//! `chat_gateway_publish_hook_seconds`.
//!
//! A resend of a message already stored (same `client_id`) is judged again
//! before the append finds its marker; if accepted or modified it is acked
//! with the original `id`, as any repeat is.
//!
//! # Layout
//! - [`config`]: the `PUBLISH_HOOK_*` options.
//! - [`request`]: the JSON body sent for one message or edit.
//! - `call`: the signed request (Standard Webhooks headers, signed by
//!   [`chat_shared::signing`] like the worker's webhooks), the slot and the
//!   deadline.
//! - [`answer`]: the three answers and the check of a modified text.

pub mod answer;
mod call;
pub mod config;
pub mod request;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_shared::metrics as m;
use chat_shared::protocol::Limits;
use chat_shared::signing::Keys;
use tokio::sync::Semaphore;

pub use answer::Answer;
pub use config::HookArgs;
pub use request::{Kind, Subject};

/// The `message` of the `unavailable` error a sender gets when the hook
/// failed and the gateway fails closed.
pub const UNAVAILABLE_MESSAGE: &str =
    "not stored: the publish hook did not answer in time or answered in error; retry with the same client_id";

/// What happens to one message or edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store it as sent.
    Accept,
    /// Store and deliver this text instead.
    Modify(String),
    /// Refuse it with error `rejected` and this reason.
    Reject(String),
    /// The hook failed and the gateway fails closed: refuse it with
    /// `unavailable`.
    Unavailable,
}

/// A configured hook: where to POST, how to sign, the bounds.
pub struct PublishHook {
    url: reqwest::Url,
    keys: Keys,
    client: reqwest::Client,
    timeout: Duration,
    fail_open: bool,
    /// `PUBLISH_HOOK_CONCURRENCY` slots shared by every connection.
    slots: Arc<Semaphore>,
    /// A modified text is checked against these.
    limits: Limits,
    /// Largest answer body read.
    max_answer_bytes: usize,
}

impl std::fmt::Debug for PublishHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishHook")
            .field("url", &self.url.as_str())
            .field("timeout", &self.timeout)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl PublishHook {
    /// The hook of `args`, or `None` when `PUBLISH_HOOK_URL` is unset.
    /// `limits` are the checks a modified text must pass.
    ///
    /// # Errors
    /// A message for the operator (the gateway exits with 64): a bad URL, a
    /// missing or undecodable secret, an HTTP client that cannot be built.
    pub fn from_args(args: &HookArgs, limits: Limits) -> Result<Option<Self>, String> {
        let Some((url, keys)) = args.endpoint()? else {
            return Ok(None);
        };
        chat_shared::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(args.timeout())
            .user_agent(concat!("chat-gateway/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the publish hook's HTTP client: {e}"))?;
        let slots = usize::try_from(args.publish_hook_concurrency).unwrap_or(usize::MAX);
        Ok(Some(Self {
            url,
            keys,
            client,
            timeout: args.timeout(),
            fail_open: args.publish_hook_fail_open,
            slots: Arc::new(Semaphore::new(slots)),
            // A text of N characters is at most 6N bytes of JSON (`\uXXXX`).
            max_answer_bytes: 64 * 1024 + limits.max_message_chars.saturating_mul(6),
            limits,
        }))
    }

    /// The application's verdict on one message or edit, after the
    /// fail-open policy.
    pub async fn screen(&self, subject: &Subject<'_>) -> Decision {
        // Serializing borrowed strings and attachments cannot fail; an
        // empty body would only make the hook answer in error.
        let body = serde_json::to_vec(subject).unwrap_or_default();
        let started = Instant::now();
        let result = self.call(body).await;
        metrics::histogram!(m::GW_PUBLISH_HOOK_SECONDS).record(started.elapsed().as_secs_f64());
        let (outcome, decision) = match result {
            Ok(Answer::Accept) => ("accept", Decision::Accept),
            Ok(Answer::Reject(reason)) => ("reject", Decision::Reject(reason)),
            Ok(Answer::Modify(text)) => ("modify", Decision::Modify(text)),
            Err(_) if self.fail_open => ("fail_open", Decision::Accept),
            Err(failure) => (failure.label(), Decision::Unavailable),
        };
        metrics::counter!(m::GW_PUBLISH_HOOK_OUTCOMES, "outcome" => outcome).increment(1);
        decision
    }

    /// The verdicts on `subjects`, in their order; the requests run
    /// concurrently (within the gateway's slots).
    pub async fn screen_all(&self, subjects: &[Subject<'_>]) -> Vec<Decision> {
        futures_util::future::join_all(subjects.iter().map(|s| self.screen(s))).await
    }
}
