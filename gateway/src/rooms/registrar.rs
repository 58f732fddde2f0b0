//! Admission and registration of new connections in Redis, built for
//! connect storms.
//!
//! Two parts, one job: a storm must cost Redis few round trips, and what
//! Redis cannot take must be refused before the client is served, never
//! accepted and then dropped (a client dropped after its upgrade comes
//! back at once, and a reconnect storm after a deploy feeds itself).
//! - **Admission** ([`Registrar::admit`]): at most `MAX_PENDING_REGISTRATIONS`
//!   connections between their upgrade and the end of their opening
//!   (registered, join history sent). Above it, and for a second after an
//!   opening timed out in Redis (Redis is backed up now, whatever the
//!   count: the bound that fits depends on how busy Redis is), a request
//!   is refused before the upgrade with 503 `overloaded` and `Retry-After`.
//! - **Batching** ([`Registrar::register`]): concurrent registrations share
//!   one pipeline ([`super::batcher`], [`presence::add_connections`]). A
//!   registration still queued after one Redis timeout (the batch ahead of
//!   it is stuck) is not sent; its connection is closed with 1013 and the
//!   retry hint, as is one whose pipeline timed out (Redis is backed up).
//!   Other Redis errors keep their `unavailable` close.
//!
//! Each registration gets exactly the answer it got alone: its user's
//! record when this is the user's first connection to the room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_shared::metrics as m;
use chat_shared::redis::{RedisError, RedisHandle};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::batcher::{BatchError, BatchLimits, Batcher};
use super::presence::{self, Registration};
use crate::config::GatewayConfig;

/// Why a connection could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Registrations are backed up (queued too long, or Redis timed out):
    /// the client should come back after the retry hint.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// Redis failed otherwise (unreachable, refused).
    #[error("{0}")]
    Redis(Arc<RedisError>),
}

impl RegisterError {
    /// The `reason` label of `chat_gateway_connections_shed_total`, for an
    /// overload.
    pub fn shed_reason(&self) -> Option<&'static str> {
        match self {
            Self::Overloaded(reason) => Some(reason),
            Self::Redis(_) => None,
        }
    }
}

/// How long an opening that timed out in Redis keeps new connections out.
pub const BACKED_UP_WINDOW: Duration = Duration::from_secs(1);

/// The gateway's registrar: the admission bound and the batching task.
#[derive(Debug)]
pub struct Registrar {
    pending: Arc<Semaphore>,
    batcher: Batcher<Registration, Option<String>, RedisError>,
    retry_after_secs: u64,
    origin: Instant,
    /// Milliseconds since `origin` plus one of the last opening that timed
    /// out in Redis; 0 = never.
    timed_out_at: AtomicU64,
}

impl Registrar {
    /// Starts the batching task (on the current runtime) for `gateway`.
    pub fn spawn(config: &GatewayConfig, gateway: String, redis: RedisHandle) -> Self {
        let max_pending = usize::try_from(config.max_pending_registrations).unwrap_or(usize::MAX);
        let limits = BatchLimits {
            max_batch: config.registration_batch_max as usize,
            linger: Duration::from_micros(config.registration_batch_wait_us),
            queue_deadline: redis.timeout(),
            queue_capacity: max_pending,
        };
        let batcher = Batcher::spawn(limits, move |regs: Vec<Registration>| {
            let (redis, gateway) = (redis.clone(), gateway.clone());
            async move {
                metrics::histogram!(m::GW_REGISTRATION_BATCH).record(regs.len() as f64);
                presence::add_connections(&redis, &gateway, &regs).await
            }
        });
        Self {
            pending: Arc::new(Semaphore::new(max_pending)),
            batcher,
            retry_after_secs: config.overload_retry_after_secs,
            origin: Instant::now(),
            timed_out_at: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Records that an opening timed out in Redis (its registration waited
    /// past the deadline or timed out, or its join history read did): new
    /// connections are refused for [`BACKED_UP_WINDOW`].
    pub fn mark_timed_out(&self) {
        self.timed_out_at.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Takes a place among the connections being opened. Refused (the
    /// request then gets 503 `overloaded`) with the `reason` label of
    /// `chat_gateway_connections_shed_total`: `pending_registrations` when
    /// `MAX_PENDING_REGISTRATIONS` are being opened, `redis_timeouts` within
    /// [`BACKED_UP_WINDOW`] of an opening that timed out. The place is freed
    /// when the permit drops.
    ///
    /// # Errors
    /// The refusal's reason.
    pub fn admit(&self) -> Result<PendingPermit, &'static str> {
        let last = self.timed_out_at.load(Ordering::Relaxed);
        let window = BACKED_UP_WINDOW.as_millis() as u64;
        if last != 0 && self.now_ms().saturating_sub(last) <= window {
            return Err("redis_timeouts");
        }
        let permit = self
            .pending
            .clone()
            .try_acquire_owned()
            .map_err(|_| "pending_registrations")?;
        metrics::gauge!(m::GW_PENDING_REGISTRATIONS).increment(1.0);
        Ok(PendingPermit { _permit: permit })
    }

    /// Seconds a refused client should wait (`OVERLOAD_RETRY_AFTER_SECS`).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs
    }

    /// Registers one connection, sharing a pipeline with the others being
    /// registered now. Returns the user's stored record when this is the
    /// user's first connection to the room (a join), as
    /// [`presence::add_connections`] does for one.
    ///
    /// # Errors
    /// [`RegisterError::Overloaded`] when it was not sent (queue full or
    /// waited past one Redis timeout) or its pipeline timed out;
    /// [`RegisterError::Redis`] for other Redis failures.
    pub async fn register(&self, reg: Registration) -> Result<Option<String>, RegisterError> {
        match self.batcher.call(reg).await {
            Ok(joined) => Ok(joined),
            Err(BatchError::Overloaded) => Err(RegisterError::Overloaded("registration_queue")),
            Err(BatchError::Failed(e)) if matches!(*e, RedisError::Timeout) => {
                Err(RegisterError::Overloaded("registration_timeout"))
            }
            Err(BatchError::Failed(e)) => Err(RegisterError::Redis(e)),
            Err(BatchError::Stopped) => Err(RegisterError::Overloaded("registration_queue")),
        }
    }
}

/// A connection's place among those being opened; frees it when dropped.
#[derive(Debug)]
#[must_use = "the place is freed when the permit drops"]
pub struct PendingPermit {
    _permit: OwnedSemaphorePermit,
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        metrics::gauge!(m::GW_PENDING_REGISTRATIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[tokio::test]
    async fn admission_stops_at_the_bound_and_after_a_timeout() {
        let cfg = GatewayConfig::parse_from([
            "chat-gateway",
            "--max-pending-registrations",
            "2",
            "--redis-url",
            "redis://127.0.0.1:1",
        ]);
        let redis = RedisHandle::new(&cfg.redis).unwrap();
        let registrar = Registrar::spawn(&cfg, "g".into(), redis);
        let first = registrar.admit().unwrap();
        let _second = registrar.admit().unwrap();
        assert_eq!(registrar.admit().unwrap_err(), "pending_registrations");
        drop(first);
        let _third = registrar.admit().unwrap();
        registrar.mark_timed_out();
        assert_eq!(registrar.admit().unwrap_err(), "redis_timeouts");
    }
}
