//! Shard leases: at most one worker processes a shard at a time.
//!
//! A lease is `chat:lease:{shard-n}` = worker id with a TTL, taken when free
//! (or when Redis still names this worker) and renewed or released only by its holder (compare-and-set in
//! Lua). The holder also tracks, on its own monotonic clock, until when its
//! lease is surely still valid ([`LeaseClock`]): the renewal's send time plus
//! the TTL minus a safety margin. A shard task stops before that instant when
//! renewals fail, so it has stopped before any other worker can acquire the
//! lease, whatever Redis's clock does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Takes a free lease, or takes back one Redis still gives this worker (a
/// shard task that stopped by itself, say because its webhook sender found
/// the lease lapsed, while no renewal had failed in Redis): its shard then
/// resumes at the next tick instead of after the whole TTL.
const ACQUIRE_LUA: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Lease operations for one worker.
#[derive(Debug, Clone)]
pub(crate) struct Leases {
    redis: RedisHandle,
    worker_id: String,
    ttl: Duration,
}

impl Leases {
    pub(crate) fn new(redis: RedisHandle, worker_id: String, ttl: Duration) -> Self {
        Self {
            redis,
            worker_id,
            ttl,
        }
    }

    /// The part of the TTL a holder never uses: it stops this long before expiry.
    pub(crate) fn safety_margin(&self) -> Duration {
        self.ttl / 4
    }

    /// Tries to take a free shard lease. `Ok(true)` when this worker now holds it.
    pub(crate) async fn acquire(&self, shard: u32) -> Result<bool, RedisError> {
        self.acquire_key(&keys::lease(shard)).await
    }

    /// Extends a held shard lease. `Ok(false)` when it is no longer ours.
    pub(crate) async fn renew(&self, shard: u32) -> Result<bool, RedisError> {
        self.renew_key(&keys::lease(shard)).await
    }

    /// Gives a shard lease back so another worker can take the shard at once.
    pub(crate) async fn release(&self, shard: u32) -> Result<(), RedisError> {
        self.release_key(&keys::lease(shard)).await
    }

    /// Tries to take the lease stored at `key` (free, or already ours).
    pub(crate) async fn acquire_key(&self, key: &str) -> Result<bool, RedisError> {
        let script = Script::new(ACQUIRE_LUA);
        let mut inv = script.key(key);
        inv.arg(&self.worker_id).arg(self.ttl.as_millis() as u64);
        Ok(self.redis.script::<i64>(&inv).await? == 1)
    }

    /// Extends the lease at `key`. `Ok(false)` when it is no longer ours.
    pub(crate) async fn renew_key(&self, key: &str) -> Result<bool, RedisError> {
        let script = Script::new(RENEW_LUA);
        let mut inv = script.key(key);
        inv.arg(&self.worker_id).arg(self.ttl.as_millis() as u64);
        Ok(self.redis.script::<i64>(&inv).await? == 1)
    }

    /// Gives the lease at `key` back.
    pub(crate) async fn release_key(&self, key: &str) -> Result<(), RedisError> {
        let script = Script::new(RELEASE_LUA);
        let mut inv = script.key(key);
        inv.arg(&self.worker_id);
        self.redis.script::<i64>(&inv).await.map(|_| ())
    }
}

/// Until when a held lease is surely valid, on this process's monotonic clock.
#[derive(Debug, Clone)]
pub(crate) struct LeaseClock {
    base: Instant,
    /// Milliseconds after `base` at which the holder must have stopped.
    valid_until_ms: Arc<AtomicU64>,
}

impl LeaseClock {
    /// A clock valid until `sent + ttl - margin`, where `sent` is when the
    /// acquiring or renewing command was sent.
    pub(crate) fn new(sent: Instant, ttl: Duration, margin: Duration) -> Self {
        let base = sent;
        let c = Self {
            base,
            valid_until_ms: Arc::new(AtomicU64::new(0)),
        };
        c.extend(sent, ttl, margin);
        c
    }

    /// Records a successful renewal sent at `sent`.
    pub(crate) fn extend(&self, sent: Instant, ttl: Duration, margin: Duration) {
        let until = sent.saturating_duration_since(self.base) + ttl.saturating_sub(margin);
        self.valid_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }

    /// Whether the holder may still process.
    pub(crate) fn is_valid(&self) -> bool {
        let now = Instant::now()
            .saturating_duration_since(self.base)
            .as_millis() as u64;
        now < self.valid_until_ms.load(Ordering::Acquire)
    }

    /// How long the holder may still process (zero once lapsed).
    pub(crate) fn remaining(&self) -> Duration {
        let now = Instant::now()
            .saturating_duration_since(self.base)
            .as_millis() as u64;
        Duration::from_millis(
            self.valid_until_ms
                .load(Ordering::Acquire)
                .saturating_sub(now),
        )
    }

    /// Marks the lease lost at once.
    pub(crate) fn expire(&self) {
        self.valid_until_ms.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_renewal_time_plus_ttl_minus_margin() {
        let ttl = Duration::from_secs(10);
        let margin = Duration::from_secs(2);
        let clock = LeaseClock::new(Instant::now(), ttl, margin);
        assert!(clock.is_valid());
        let until = || clock.valid_until_ms.load(Ordering::Acquire);
        assert_eq!(until(), 8_000, "stops 2 s before the lease can expire");
        clock.extend(clock.base + Duration::from_secs(5), ttl, margin);
        assert_eq!(until(), 13_000);
        // A late reply to an older renewal never shortens validity.
        clock.extend(clock.base, ttl, margin);
        assert_eq!(until(), 13_000);
        clock.expire();
        assert!(!clock.is_valid());
    }

    #[test]
    fn clock_without_renewal_lapses() {
        let ttl = Duration::from_millis(40);
        let clock = LeaseClock::new(Instant::now(), ttl, Duration::from_millis(10));
        let start = Instant::now();
        while clock.is_valid() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "clock never lapsed"
            );
            std::thread::yield_now();
        }
        assert!(start.elapsed() >= Duration::from_millis(29));
    }
}
