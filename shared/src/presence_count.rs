//! Presence in large rooms: a `presence_count` frame instead of per-user
//! `join` / `leave`.
//!
//! Announcing every join and leave to every member costs O(n²) frames when n
//! users connect at once. Above `PRESENCE_EVENTS_MAX_MEMBERS` distinct users
//! a room gets `{"type":"presence_count","data":{"room","count"}}` instead,
//! at most once per second and only when the count changed since the last
//! one sent.
//!
//! Whoever produces a presence change (a gateway for its connections, the
//! janitor for a dead gateway's) calls [`PresenceCounts::changed`] after the
//! change is in Redis. One script ([`DECIDE`]) reads the room's distinct users
//! (`HLEN` of its presence users) and, in the same slot, the count last sent
//! and a one-second throttle mark, so the limits hold room-wide however many
//! processes produce changes. A change that falls inside the throttle window
//! is not lost: the producer re-checks the room when the window ends (the
//! trailing edge), and sends the count then if it still differs.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::Script;
use serde::Serialize;

use crate::ephemeral::{self, EphemeralEvent};
use crate::ids::RoomId;
use crate::keys;
use crate::protocol::outbound::frame;
use crate::redis::{RedisError, RedisHandle};

/// Smallest gap between two `presence_count` frames of one room.
pub const THROTTLE: Duration = Duration::from_secs(1);

/// KEYS: presence users, last count sent, throttle mark (one slot).
/// ARGV: max members, throttle ms. Returns `{0, count}` when the room is
/// small (per-user events; the count state is dropped), `{1, count}` when
/// `count` is to be sent now, `{2, count}` when it equals the last one sent,
/// `{3, pttl}` when the throttle holds it for `pttl` ms.
static DECIDE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('HLEN', KEYS[1])
if n <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[2], KEYS[3])
  return {0, n}
end
if tonumber(redis.call('GET', KEYS[2]) or '-1') == n then
  return {2, n}
end
local ttl = redis.call('PTTL', KEYS[3])
if ttl > 0 then
  return {3, ttl}
end
redis.call('SET', KEYS[2], n, 'EX', 86400)
redis.call('SET', KEYS[3], 1, 'PX', ARGV[2])
return {1, n}
",
    )
});

/// What a presence change leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The room is small: announce each user's `join` / `leave`.
    PerUser,
    /// The room is large; its count was sent, held back, or unchanged.
    Counted,
}

/// Decides and sends a process's `presence_count` frames; one per process.
#[derive(Debug)]
pub struct PresenceCounts {
    redis: RedisHandle,
    max_members: u64,
    /// Rooms with a re-check scheduled at the end of their throttle window.
    trailing: Mutex<HashSet<RoomId>>,
}

impl PresenceCounts {
    /// Counts for rooms above `max_members` distinct users.
    pub fn new(redis: RedisHandle, max_members: u64) -> Arc<Self> {
        Arc::new(Self {
            redis,
            max_members,
            trailing: Mutex::new(HashSet::new()),
        })
    }

    /// Called after a presence change in `room` is stored. Sends the count
    /// when due, or schedules a re-check at the end of the throttle window.
    ///
    /// # Errors
    /// Fails when Redis does not answer (the caller then announces nothing:
    /// presence events are best-effort).
    pub async fn changed(self: &Arc<Self>, room: &RoomId) -> Result<Decision, RedisError> {
        let (state, value): (u8, i64) = self
            .redis
            .script(
                DECIDE
                    .key(keys::presence_users(room))
                    .key(keys::presence_count_sent(room))
                    .key(keys::presence_count_throttle(room))
                    .arg(self.max_members)
                    .arg(THROTTLE.as_millis() as u64),
            )
            .await?;
        match state {
            0 => return Ok(Decision::PerUser),
            1 => {
                let count = u64::try_from(value).unwrap_or(0);
                let event = EphemeralEvent {
                    room: room.to_string(),
                    frame: presence_count_frame(room.as_str(), count),
                    except_conn: None,
                };
                ephemeral::publish(&self.redis, room, vec![event]).await?;
            }
            3 => self.trail(room, Duration::from_millis(value.max(1) as u64)),
            _ => {}
        }
        Ok(Decision::Counted)
    }

    /// Re-checks `room` after `wait`, once however many changes asked for it.
    fn trail(self: &Arc<Self>, room: &RoomId, wait: Duration) {
        if !self.lock().insert(room.clone()) {
            return;
        }
        let this = Arc::clone(self);
        let room = room.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait + Duration::from_millis(5)).await;
            this.lock().remove(&room);
            if let Err(e) = this.changed(&room).await {
                tracing::warn!(error = %e, room = %room, "Cannot send a presence count");
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<RoomId>> {
        self.trailing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `{"type":"presence_count","data":{"room","count"}}`.
pub fn presence_count_frame(room: &str, count: u64) -> String {
    #[derive(Serialize)]
    struct Count<'a> {
        room: &'a str,
        count: u64,
    }
    frame("presence_count", Count { room, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_has_the_contract_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&presence_count_frame("lobby", 101)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"presence_count","data":{"room":"lobby","count":101}})
        );
    }
}
