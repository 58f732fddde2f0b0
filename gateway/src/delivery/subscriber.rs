//! The gateway's delivery channel: one pub/sub subscription to `chat:deliver:<gateway>`.
//!
//! Runs on its own connection (never from the pool) and hands each batch to
//! [`LocalRooms::deliver`]. Two failure modes are handled, both known from
//! peers:
//! - the connection drops (Socket.IO #4845: subscriptions not restored): the
//!   loop re-subscribes with backoff;
//! - the subscription stays open but silently delivers nothing (Centrifugo
//!   #1189: health green while delivery is dead): every `PROBE_INTERVAL_MS` the
//!   gateway publishes a probe to its own channel through Redis; when none has
//!   come back for three intervals the subscription is declared dead, torn
//!   down and re-established.
//!
//! While down, [`SubscriptionState::is_up`] is false, so `/readyz` is 503 and
//! `/health` says `delivery: down`. After every re-subscription each local
//! connection catches up from history, so no message published meanwhile is
//! lost; a ban notice published meanwhile is, and the room re-check
//! ([`crate::edge::recheck`]), woken by [`SubscriptionState::resubscribed`], finds
//! the ban in Redis instead.
//!
//! Messages arrive as RESP3 pushes on a connection of its own. redis-rs hands
//! them to a sender we supply, and ours is a bounded queue
//! (`DELIVERY_BUFFER_BATCHES`): when this task falls behind, further batches
//! are dropped instead of piling up in memory, and once it has caught up
//! every local connection resyncs from history (each one's gap fill is
//! bounded in concurrency by the history reader), so a drop costs reads,
//! never messages.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_shared::envelope::{now_us, DeliveryBatch};
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::RedisHandle;
use chat_shared::shutdown::sleep_or_cancel;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::delivery::registry::LocalRooms;

/// Longest pause between re-subscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How many probe intervals without a probe make a subscription dead.
const MISSED_PROBES: u32 = 3;

/// Whether the subscription is established and proven to deliver.
#[derive(Debug, Default)]
pub struct SubscriptionState {
    up: AtomicBool,
    /// When the last probe came back (Unix µs).
    last_probe_us: AtomicI64,
    /// Signalled at every (re-)subscription: notices published while the
    /// subscription was down (a ban's) are lost, so the room re-check
    /// (`recheck`) runs at once.
    resubscribed: Notify,
}

impl SubscriptionState {
    /// Completes at the next (re-)subscription (or at once if one happened
    /// since the last call). For one waiter: the room re-check.
    pub async fn resubscribed(&self) {
        self.resubscribed.notified().await;
    }
    /// True while subscribed and probes come back.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    fn set(&self, v: bool) {
        self.up.store(v, Ordering::Release);
    }
}

/// Whether a subscription whose last sign of life was at `last_us` is dead at `now_us`.
fn is_silent(last_us: i64, now_us: i64, probe_interval: Duration) -> bool {
    let limit = (probe_interval * MISSED_PROBES).as_micros() as i64;
    now_us - last_us > limit
}

/// How the subscriber is sized and paced.
#[derive(Debug, Clone, Copy)]
pub struct SubscriberConfig {
    /// Delivery batches buffered between Redis and the dispatch loop.
    pub buffer_batches: usize,
    /// Interval of the liveness probes.
    pub probe_interval: Duration,
}

/// Subscribes and delivers until `shutdown`.
pub async fn run(
    redis: RedisHandle,
    gateway_id: String,
    rooms: Arc<LocalRooms>,
    state: Arc<SubscriptionState>,
    config: SubscriberConfig,
    shutdown: CancellationToken,
) {
    let channel = keys::gateway_channel(&gateway_id);
    let mut backoff = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        let (tx, mut pushes) = mpsc::channel::<PushInfo>(config.buffer_batches.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        // Called by redis-rs's connection task: never blocks.
        let sender = move |push: PushInfo| -> Result<(), Infallible> {
            if tx.try_send(push).is_err() {
                flag.store(true, Ordering::Release);
            }
            Ok(())
        };
        let mut conn = match redis.push_connection(sender).await {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "subscribe").increment(1);
                tracing::warn!(error = %e, "Cannot open delivery subscription; retrying");
                sleep_or_cancel(&shutdown, &mut backoff, MAX_BACKOFF).await;
                continue;
            }
        };
        // A reply that never comes (a half-dead connection) must not hang us.
        let subscribed = tokio::time::timeout(redis.timeout(), conn.subscribe(&channel)).await;
        if let Err(e) = subscribed
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            metrics::counter!(m::GW_REDIS_ERRORS, "op" => "subscribe").increment(1);
            tracing::warn!(error = %e, "Subscribe failed; retrying");
            sleep_or_cancel(&shutdown, &mut backoff, MAX_BACKOFF).await;
            continue;
        }
        backoff = Duration::from_millis(50);
        state.last_probe_us.store(now_us(), Ordering::Release);
        state.set(true);
        metrics::counter!(m::GW_SUBSCRIPTIONS).increment(1);
        tracing::info!(channel, "Delivery subscription established");
        // Whatever was published while we were not subscribed (including
        // before the first subscription, for connections accepted meanwhile)
        // is in history; a ban's notice is not, and the re-check finds it.
        rooms.resync_all();
        state.resubscribed.notify_one();

        let mut probe = tokio::time::interval(config.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else { break };
                    if !dispatch(push, &rooms, &state, &gateway_id) {
                        metrics::counter!(m::GW_REDIS_ERRORS, "op" => "subscription_lost").increment(1);
                        tracing::warn!(channel, "Delivery subscription lost; re-subscribing");
                        break;
                    }
                    if overflowed.swap(false, Ordering::AcqRel) {
                        metrics::counter!(m::GW_DELIVERY_OVERFLOWS).increment(1);
                        tracing::warn!(
                            channel,
                            buffer = config.buffer_batches,
                            "Delivery buffer overflowed; dropped batches are recovered from history"
                        );
                        rooms.resync_all();
                    }
                }
                _ = probe.tick() => {
                    if is_silent(state.last_probe_us.load(Ordering::Acquire), now_us(), config.probe_interval) {
                        metrics::counter!(m::GW_REDIS_ERRORS, "op" => "subscription_silent").increment(1);
                        tracing::warn!(channel, "Delivery subscription silent (probes not returning); re-subscribing");
                        break;
                    }
                    send_probe(&redis, &channel).await;
                }
                _ = shutdown.cancelled() => break,
            }
        }
        state.set(false);
    }
}

/// Hands one push to the local rooms. Returns `false` when the connection
/// is gone.
fn dispatch(
    push: PushInfo,
    rooms: &LocalRooms,
    state: &SubscriptionState,
    gateway_id: &str,
) -> bool {
    match push.kind {
        PushKind::Disconnection => false,
        PushKind::Message | PushKind::SMessage => {
            // `data` is `[channel, payload]`.
            let Some(Value::BulkString(payload)) = push.data.get(1) else {
                return true;
            };
            match DeliveryBatch::decode(payload) {
                Ok(batch) if batch.probe.is_some() => {
                    state.last_probe_us.store(now_us(), Ordering::Release);
                }
                Ok(batch) => {
                    rooms.deliver(&batch);
                    rooms.deliver_events(&batch.events, |m| {
                        crate::rooms::presence::local_conn(gateway_id, m)
                    });
                }
                Err(_) => tracing::warn!(gateway_id, "Undecodable delivery batch dropped"),
            }
            true
        }
        // Subscription confirmations and other pushes.
        _ => true,
    }
}

async fn send_probe(redis: &RedisHandle, channel: &str) {
    let payload = DeliveryBatch::probe(now_us()).encode();
    if let Err(e) = redis
        .query::<i64>(
            redis::cmd(redis.publish_command())
                .arg(channel)
                .arg(payload),
        )
        .await
    {
        metrics::counter!(m::GW_REDIS_ERRORS, "op" => "probe").increment(1);
        tracing::debug!(error = %e, "Delivery probe not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_after_three_missed_probes() {
        let i = Duration::from_secs(5);
        assert!(!is_silent(0, 14_000_000, i));
        assert!(!is_silent(0, 15_000_000, i));
        assert!(is_silent(0, 15_000_001, i));
    }
}
