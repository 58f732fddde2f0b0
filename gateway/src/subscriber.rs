//! The gateway's delivery channel: one pub/sub subscription to `chat:deliver:<gateway>`.
//!
//! Runs on its own connection (never from the pool), hands each batch to
//! [`LocalRooms::deliver`], and re-subscribes with backoff whenever the
//! connection drops (a lost subscription is the known Socket.IO failure).
//! While unsubscribed, `/readyz` and `/health` report it. Messages published
//! while unsubscribed are not lost for connected clients: each connection
//! notices the `seq` gap on the next message and fills it from history.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_shared::envelope::DeliveryBatch;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::RedisHandle;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::rooms::LocalRooms;

/// Whether the subscription is currently established.
#[derive(Debug, Default)]
pub struct SubscriptionState {
    up: AtomicBool,
}

impl SubscriptionState {
    /// True while subscribed.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    fn set(&self, v: bool) {
        self.up.store(v, Ordering::Release);
    }
}

/// Subscribes and delivers until `shutdown`.
pub async fn run(
    redis: RedisHandle,
    gateway_id: String,
    rooms: Arc<LocalRooms>,
    state: Arc<SubscriptionState>,
    shutdown: CancellationToken,
) {
    let channel = keys::gateway_channel(&gateway_id);
    let mut backoff = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        let mut pubsub = match redis.pubsub().await {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "subscribe").increment(1);
                tracing::warn!(error = %e, "Cannot open delivery subscription; retrying");
                sleep_or_cancel(&shutdown, &mut backoff).await;
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            metrics::counter!(m::GW_REDIS_ERRORS, "op" => "subscribe").increment(1);
            tracing::warn!(error = %e, "Subscribe failed; retrying");
            sleep_or_cancel(&shutdown, &mut backoff).await;
            continue;
        }
        backoff = Duration::from_millis(50);
        state.set(true);
        metrics::counter!(m::GW_SUBSCRIPTIONS).increment(1);
        tracing::info!(channel, "Delivery subscription established");
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => match DeliveryBatch::decode(msg.get_payload_bytes()) {
                        Ok(batch) => {
                            rooms.deliver(&batch);
                        }
                        Err(_) => tracing::warn!(channel, "Undecodable delivery batch dropped"),
                    },
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            }
        }
        state.set(false);
        if !shutdown.is_cancelled() {
            metrics::counter!(m::GW_REDIS_ERRORS, "op" => "subscription_lost").increment(1);
            tracing::warn!(channel, "Delivery subscription lost; re-subscribing");
        }
    }
}

async fn sleep_or_cancel(shutdown: &CancellationToken, backoff: &mut Duration) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
}
