//! The janitor's pass over message indexes: it removes entries of messages
//! that were never stored (issue 23, path 11).
//!
//! A gateway writes `id → :<author>` into `chat:msg-index:{messages:<room>}`
//! before its append, and the worker's persist turns that into
//! `<seq>:<author>`. When the append fails with a Redis error, the gateway
//! cannot know whether it ran, so it leaves the entry: the message may have
//! been stored. If it was not, the pending entry stays for as long as the
//! room is active (every persist refreshes the index's TTL). This pass removes
//! pending entries whose id (a UUID v7, so it carries its creation time) is
//! older than `INDEX_PENDING_MAX_AGE_MS`: by then a stored message is long
//! persisted. The removal is conditional and atomic ([`DROP_PENDING_LUA`]),
//! so an entry the worker completed in the meantime stays. A message still
//! waiting in a stream that long (no worker for the whole age) loses only the
//! right to be edited before it is persisted; its persist writes the entry
//! again.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::{RedisError, RedisHandle};

use crate::Context;

/// Entries read per `HSCAN` round trip.
const PAGE: usize = 500;

/// Deletes the given ids from the index (KEYS[1]) if they are still pending
/// (value `:<author>`). Returns how many went.
const DROP_PENDING_LUA: &str = r#"
local n = 0
for _, id in ipairs(ARGV) do
  local v = redis.call('HGET', KEYS[1], id)
  if v and string.sub(v, 1, 1) == ':' then
    n = n + redis.call('HDEL', KEYS[1], id)
  end
end
return n
"#;

/// When the next pass is due: every half of the maximum age, so an entry is
/// gone at most 1.5 ages after its message was sent.
pub(crate) struct Schedule {
    max_age: Duration,
    next: Instant,
    script: redis::Script,
}

impl Schedule {
    /// A schedule whose first pass is one period after start.
    pub(crate) fn new(max_age_ms: u64) -> Self {
        let max_age = Duration::from_millis(max_age_ms);
        Self {
            max_age,
            next: Instant::now() + max_age / 2,
            script: redis::Script::new(DROP_PENDING_LUA),
        }
    }

    /// Runs a pass over every active room when one is due. Errors are
    /// counted and logged; the next pass tries again.
    pub(crate) async fn run_if_due(&mut self, ctx: &Context) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + self.max_age / 2;
        match self.pass(&ctx.redis).await {
            Ok(0) => {}
            Ok(dropped) => {
                tracing::info!(dropped, "Removed index entries of messages never stored");
            }
            Err(e) => {
                metrics::counter!(m::WK_REDIS_ERRORS, "op" => "janitor").increment(1);
                tracing::warn!(error = %e, "Message index pass failed");
            }
        }
    }

    /// One pass: every room of `rooms:active`, page by page. Returns how many
    /// entries were removed.
    async fn pass(&self, redis: &RedisHandle) -> Result<u64, RedisError> {
        let cutoff_ms = now_ms().saturating_sub(self.max_age.as_millis() as u64);
        let mut dropped = 0;
        let mut cursor = 0;
        loop {
            let (next, page) = redis.sscan_page(keys::ROOMS_ACTIVE, cursor, 200).await?;
            for room in page.iter().filter_map(|r| RoomId::parse(r).ok()) {
                dropped += self.sweep_room(redis, &room, cutoff_ms).await?;
            }
            if next == 0 {
                return Ok(dropped);
            }
            cursor = next;
        }
    }

    /// Removes the room's pending entries created before `cutoff_ms`.
    async fn sweep_room(
        &self,
        redis: &RedisHandle,
        room: &RoomId,
        cutoff_ms: u64,
    ) -> Result<u64, RedisError> {
        let index = keys::message_index(room);
        let mut dropped = 0;
        let mut cursor = 0u64;
        loop {
            let (next, fields): (u64, Vec<String>) = redis
                .query(
                    redis::cmd("HSCAN")
                        .arg(&index)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(PAGE),
                )
                .await?;
            let old: Vec<&str> = fields
                .chunks_exact(2)
                .filter(|kv| kv[1].starts_with(':'))
                .map(|kv| kv[0].as_str())
                .filter(|id| created_ms(id).is_some_and(|ms| ms < cutoff_ms))
                .collect();
            if !old.is_empty() {
                let mut inv = self.script.key(&index);
                inv.arg(&old);
                let n: u64 = redis.script(&inv).await?;
                dropped += n;
            }
            if next == 0 {
                return Ok(dropped);
            }
            cursor = next;
        }
    }
}

/// The creation time, in Unix milliseconds, of a UUID v7 message id.
fn created_ms(id: &str) -> Option<u64> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_creation_time_of_a_v7_id() {
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_700_000_000, 123_000_000);
        let id = uuid::Uuid::new_v7(ts).to_string();
        assert_eq!(created_ms(&id), Some(1_700_000_000_123));
    }

    #[test]
    fn ignores_what_is_not_a_v7_id() {
        assert_eq!(created_ms("not-a-uuid"), None);
        // A v4 id (random; version nibble 4) carries no time.
        assert_eq!(created_ms("9b2e8f34-1c7d-4e5a-9f0b-2d4c6e8a1b3f"), None);
    }
}
