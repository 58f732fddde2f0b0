//! Signed outgoing webhooks: every persisted record of every room, POSTed to
//! `WEBHOOK_URL` in batches, at least once and in order per room.
//!
//! # Layout
//! - [`config`]: the `WEBHOOK_*` options and the signing secret.
//! - `outbox`: the durable, bounded queue per shard
//!   (`chat:webhooks:{shard-<n>}`). The shard task appends each batch's
//!   records in the round trip that acks the batch, so the batch pipeline
//!   never waits on HTTP and a SIGKILLed worker loses nothing.
//! - `sender`: one task per held shard, started and stopped with the shard
//!   task and fenced by the same lease: reads the outbox in order, one batch
//!   in flight at a time, and deletes what was delivered.
//! - `deliver`: one batch's attempts, backoff and bound.
//! - `body`: the JSON body and the batch's `webhook-id`.
//! - [`chat_shared::signing`] (shared with the gateway's pre-publish hook):
//!   the keys of `WEBHOOK_SECRET` and the two signatures every request
//!   carries: `X-Chat-Signature`, and the Standard Webhooks headers
//!   (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! A room maps to one shard and a shard to one lease holder, so per-room
//! order is per-shard order, kept by sending each shard's outbox in order
//! with one request in flight. After a takeover the new holder first resends
//! what its predecessor had read but not deleted, and redoes the batches it
//! had not acked: duplicates carry the same `id` (or `event_id`) and `seq`.

pub(crate) mod config;

mod body;
mod deliver;
pub(crate) mod outbox;
pub(crate) mod sender;

use std::sync::Arc;

use chat_shared::signing::Keys;
use config::WebhookArgs;

/// A configured webhook: where to POST, how to sign, with one shared client.
#[derive(Debug)]
pub(crate) struct Webhook {
    pub(crate) url: String,
    pub(crate) keys: Keys,
    pub(crate) args: WebhookArgs,
    pub(crate) client: reqwest::Client,
}

impl Webhook {
    /// The webhook of `args`, or `None` when `WEBHOOK_URL` is unset.
    ///
    /// # Errors
    /// When the secret file cannot be read, a `whsec_` secret is not base64,
    /// or the HTTP client cannot be built.
    pub(crate) fn from_args(args: &WebhookArgs) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = args.webhook_url.clone() else {
            return Ok(None);
        };
        let secret = args
            .secret()
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("WEBHOOK_URL needs WEBHOOK_SECRET"))?;
        let keys = Keys::new(&secret).map_err(anyhow::Error::msg)?;
        chat_shared::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(args.timeout())
            .connect_timeout(args.timeout())
            .user_agent(concat!("chat-fanout-worker/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(Arc::new(Self {
            url,
            keys,
            args: args.clone(),
            client,
        })))
    }
}
