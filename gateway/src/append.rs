//! Stamping a validated message and appending it to its room's stream shard.
//!
//! The append is the durability point: once `XADD` returns, a worker will
//! persist and deliver the entry even if this gateway dies, so only then is the
//! sender acked. Concurrent appends from many connections share the pool's
//! multiplexed connections, which pipelines them under load with no added wait
//! at idle.

use std::time::Instant;

use chat_shared::envelope::{now_us, StreamEntry, STREAM_FIELD, VERSION};
use chat_shared::ids::{RoomId, Username};
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::{RedisError, RedisHandle};

/// What the sender's ack needs.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The UUID v7 assigned to the message.
    pub id: String,
    /// The timestamp assigned to the message.
    pub timestamp: String,
}

/// Stamps `message` with a UUID v7 and the current time and appends it.
///
/// # Errors
/// Fails when Redis does not take the entry within the timeout; the message
/// was then not stored and must not be acked.
pub async fn append(
    redis: &RedisHandle,
    shards: u32,
    room: &RoomId,
    username: &Username,
    message: String,
) -> Result<Appended, RedisError> {
    let now = chrono::Utc::now();
    let entry = StreamEntry {
        v: VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        room: room.to_string(),
        username: username.as_str().to_owned(),
        message,
        timestamp: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stamped_us: now_us(),
    };
    let stream = keys::stream(keys::shard_of(room, shards));
    let started = Instant::now();
    let cmd = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(STREAM_FIELD)
        .arg(entry.encode())
        .to_owned();
    // Not retried: an append repeated after a lost reply would be stored twice.
    let result = redis.query_once::<String>(&cmd).await;
    metrics::histogram!(m::GW_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        metrics::counter!(m::GW_REDIS_ERRORS, "op" => "append").increment(1);
        // Counted above; during an outage this would log once per message.
        tracing::debug!(error = %e, "Stream append failed");
    }
    result.map(|_| Appended {
        id: entry.id,
        timestamp: entry.timestamp,
    })
}
