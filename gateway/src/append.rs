//! Stamping a validated message and appending it to its room's stream shard.
//!
//! The append is the durability point: once it returns, a worker will
//! persist and deliver the entry even if this gateway dies, so only then is the
//! sender acked. One Lua call per message (all its keys share the shard's hash
//! tag) does three things atomically:
//! - **Deduplication.** A message with a `client_id` leaves a marker
//!   `(room, user, client_id) → (id, timestamp)` for `DEDUPE_WINDOW_SECS`. A
//!   retry with the same `client_id` (after a timeout whose append did land, or
//!   after a reconnect) finds it and is acked with the original `id` and
//!   `timestamp` instead of being stored twice.
//! - **Back-pressure.** Above `STREAM_BACKLOG_MAX` entries in the shard (workers
//!   down or behind), the append is refused and the sender gets `unavailable`,
//!   so a stalled pipeline cannot fill Redis's memory.
//! - The `XADD` itself.
//!
//! A message's id is also written to its room's message index, in the same
//! round trip just before the script (a pipeline; the index lives in the
//! room's slot, not the shard's), so an `edit`, `delete`, `react` or
//! `reply_to` sent right after the ack finds it even before a worker has
//! persisted it. An id whose append did not store it (a repeat, a refusal,
//! an error) is removed from the index again.
//!
//! Concurrent appends from many connections share the multiplexed
//! connections, which pipelines them under load with no added wait at idle.

use std::sync::LazyLock;
use std::time::Instant;

use chat_shared::envelope::{now_us, RoomEvent, StreamEntry, STREAM_FIELD};
use chat_shared::ids::{RoomId, Username};
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::protocol::Attachment;
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

/// KEYS: stream, dedupe marker (absent without `client_id`).
/// ARGV: field, entry, backlog cap (0 = none), id, timestamp, window secs.
/// Returns `{1, false}` when appended, `{0, "<id> <timestamp>"}` for a
/// repeat, `{-1, false}` when the backlog is full.
const APPEND_LUA: &str = r#"
if KEYS[2] then
  local prev = redis.call('GET', KEYS[2])
  if prev then return {0, prev} end
end
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('XLEN', KEYS[1]) >= cap then return {-1, false} end
redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[4] .. ' ' .. ARGV[5], 'EX', tonumber(ARGV[6]))
end
return {1, false}
"#;

/// The loaded [`APPEND_LUA`] (its SHA is computed once).
static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_LUA));

/// What the sender's ack needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The UUID v7 assigned to the message (the original one for a repeat).
    pub id: String,
    /// The timestamp assigned to the message (the original one for a repeat).
    pub timestamp: String,
    /// Whether this was a repeat of a `client_id` already stored.
    pub repeat: bool,
}

/// Why a message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Redis did not take the entry (unreachable, timed out, failed).
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The shard's backlog is at `STREAM_BACKLOG_MAX`: workers are down or behind.
    #[error("stream backlog full")]
    BacklogFull,
}

/// Limits an append is subject to.
#[derive(Debug, Clone, Copy)]
pub struct AppendLimits {
    /// Number of stream shards.
    pub shards: u32,
    /// Most entries a shard may hold before appends are refused (0 = no cap).
    pub backlog_max: u64,
    /// How long a `client_id` is remembered for deduplication, in seconds.
    pub dedupe_window_secs: u64,
}

/// What a connection (or the publish API) asks to append: a message, or a
/// room event when `event` is set (an edit's new text is in `message`).
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    /// The room.
    pub room: &'a RoomId,
    /// The sender's display name.
    pub username: &'a Username,
    /// The sender's token `sub` when authentication is on.
    pub user_id: Option<&'a str>,
    /// The client's nonce (deduplication).
    pub client_id: Option<&'a str>,
    /// The text (empty for a delete or a reaction).
    pub message: String,
    /// The message answered, already checked to exist.
    pub reply_to: Option<String>,
    /// Validated attachments.
    pub attachments: Vec<Attachment>,
    /// The room event, if this is one.
    pub event: Option<RoomEvent>,
}

impl<'a> Draft<'a> {
    /// A plain message.
    pub fn message(
        room: &'a RoomId,
        username: &'a Username,
        user_id: Option<&'a str>,
        client_id: Option<&'a str>,
        message: String,
    ) -> Self {
        Self {
            room,
            username,
            user_id,
            client_id,
            message,
            reply_to: None,
            attachments: Vec::new(),
            event: None,
        }
    }
}

/// Stamps the draft with a UUID v7 and the current time and appends it.
///
/// # Errors
/// Fails when Redis does not take the entry within the timeout, or the
/// shard's backlog is full; the message was then not stored and must not be
/// acked.
pub async fn append(
    redis: &RedisHandle,
    limits: AppendLimits,
    draft: Draft<'_>,
) -> Result<Appended, AppendError> {
    let now = chrono::Utc::now();
    let Draft {
        room,
        username,
        user_id,
        client_id,
        message,
        reply_to,
        attachments,
        event,
    } = draft;
    let mut entry = StreamEntry {
        v: 0,
        id: uuid::Uuid::now_v7().to_string(),
        room: room.to_string(),
        username: username.as_str().to_owned(),
        message,
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stamped_us: now_us(),
        user_id: user_id.map(str::to_owned),
        reply_to,
        attachments,
        event,
    };
    entry.v = entry.required_version();
    let shard = keys::shard_of(room, limits.shards);
    let mut inv = APPEND.key(keys::stream(shard));
    if let Some(client_id) = client_id {
        // The sender: its user id when authenticated, else its name.
        inv.key(keys::dedupe(shard, room, entry.user_key(), client_id));
    }
    inv.arg(STREAM_FIELD)
        .arg(entry.encode())
        .arg(limits.backlog_max)
        .arg(&entry.id)
        .arg(&entry.timestamp)
        .arg(limits.dedupe_window_secs.max(1));
    let indexed = entry.event.is_none();
    let mut pipe = redis::pipe();
    if indexed {
        pipe.hset(
            keys::message_index(room),
            &entry.id,
            format!(":{}", entry.user_key()),
        )
        .ignore();
    }
    pipe.invoke_script(&inv);
    let started = Instant::now();
    // Not retried: without a client_id, an append repeated after a lost
    // reply would be stored twice. A NOSCRIPT answer means the script did
    // not run: load it and send again.
    let result = match redis.pipe_once::<((i64, Option<String>),)>(&pipe).await {
        Err(e) if e.is_no_script() => {
            let loaded = redis
                .query::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(APPEND_LUA))
                .await;
            match loaded {
                Ok(_) => redis.pipe_once(&pipe).await,
                Err(e) => Err(e),
            }
        }
        other => other,
    }
    .map(|(r,)| r);
    metrics::histogram!(m::GW_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
    let outcome = match result {
        Ok((1, _)) => {
            return Ok(Appended {
                id: entry.id,
                timestamp: entry.timestamp,
                repeat: false,
            })
        }
        Ok((0, Some(prev))) => {
            metrics::counter!(m::GW_APPEND_REPEATS).increment(1);
            let (id, timestamp) = prev.split_once(' ').unwrap_or((prev.as_str(), ""));
            Ok(Appended {
                id: id.to_owned(),
                timestamp: timestamp.to_owned(),
                repeat: true,
            })
        }
        Ok(_) => {
            metrics::counter!(m::GW_BACKLOG_REFUSALS).increment(1);
            Err(AppendError::BacklogFull)
        }
        Err(e) => {
            metrics::counter!(m::GW_REDIS_ERRORS, "op" => "append").increment(1);
            // Counted above; during an outage this would log once per message.
            tracing::debug!(error = %e, "Stream append failed");
            Err(e.into())
        }
    };
    if indexed {
        // This id was not stored: take it out of the index again.
        let _ = redis
            .query::<()>(
                redis::cmd("HDEL")
                    .arg(keys::message_index(room))
                    .arg(&entry.id),
            )
            .await;
    }
    outcome
}
