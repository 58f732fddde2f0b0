//! The per-user message budget shared by every gateway, kept in Redis.
//!
//! GCRA (the generic cell rate algorithm) in one Lua call per message: the
//! key holds the user's "theoretical arrival time"; a message is allowed
//! when that time is no further ahead of now than the burst allows. Redis's
//! clock is used, so gateways' clocks do not matter. The user is the token's
//! `sub` when authentication is on, else the client IP.
//!
//! The same budget bounds how many new rooms one user (or IP) may create:
//! each room's history costs Redis memory until it expires, so an anonymous
//! client posting to ever new room names would otherwise grow Redis without
//! bound.

use std::sync::LazyLock;

use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

/// KEYS: the user's budget key. ARGV: emission interval (ms), burst.
/// Returns 1 when allowed, 0 when over.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return 0 end
local next_tat = tat + interval
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(next_tat - now) + 1)
return 1
"#,
    )
});

/// A GCRA budget: `USER_RATE_LIMIT_PER_SEC` / `USER_RATE_LIMIT_BURST` for
/// messages, `ROOM_CREATION_PER_MIN` / `ROOM_CREATION_BURST` for new rooms.
#[derive(Debug, Clone, Copy)]
pub struct UserLimit {
    interval_ms: f64,
    burst: f64,
}

impl UserLimit {
    /// The limit, or `None` when `per_sec` is 0 (off).
    pub fn new(per_sec: f64, burst: f64) -> Option<Self> {
        (per_sec > 0.0).then(|| Self {
            interval_ms: 1000.0 / per_sec,
            burst: burst.max(1.0),
        })
    }

    /// Spends one message of `user`'s budget; `false` when it is exhausted.
    ///
    /// # Errors
    /// Fails when Redis does not answer (the caller lets the message through
    /// then: the append fails the same way if Redis is really gone).
    pub async fn allow(&self, redis: &RedisHandle, user: &str) -> Result<bool, RedisError> {
        self.allow_key(redis, &chat_shared::keys::user_budget(user))
            .await
    }

    /// Spends one unit of the budget at `key`.
    ///
    /// # Errors
    /// Fails when Redis does not answer.
    pub async fn allow_key(&self, redis: &RedisHandle, key: &str) -> Result<bool, RedisError> {
        let mut inv = GCRA.key(key);
        inv.arg(self.interval_ms).arg(self.burst);
        Ok(redis.script::<i64>(&inv).await? == 1)
    }
}
