//! Read receipts: each user's last-read `seq` per room, which never goes down.
//!
//! Stored in `chat:reads:{messages:<room>}` (user key → seq), in the slot of
//! the room's history, so one script can check the room's latest `seq`, raise
//! the receipt, and give the hash the remaining TTL of the room state: the
//! receipts expire with the history they point into (`HISTORY_TTL`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;
use serde::Serialize;

use crate::http::error::{parse_room, ApiError};
use crate::state::AppState;

/// KEYS: reads hash, room state. ARGV: user key, seq.
/// Returns -1 when `seq` is above the room's latest `seq`, 0 when it does
/// not raise the stored receipt (or the room has no state: nothing to read),
/// 1 when raised. The hash takes the room state's remaining TTL.
static RAISE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local seq = tonumber(ARGV[2])
local latest = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if seq > latest then return -1 end
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -2 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if seq <= cur then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
return 1
"#,
    )
});

/// What a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raise {
    /// Stored: announce it.
    Raised,
    /// Not above the stored one: ignored, nothing to announce.
    Unchanged,
    /// Above the room's latest `seq`: refused.
    BeyondLatest,
}

/// Raises `user`'s receipt in `room` to `seq`.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn raise(
    redis: &RedisHandle,
    room: &RoomId,
    user: &str,
    seq: u64,
) -> Result<Raise, RedisError> {
    let mut inv = RAISE.key(keys::reads(room));
    inv.key(keys::room_state(room)).arg(user).arg(seq);
    Ok(match redis.script::<i64>(&inv).await? {
        1 => Raise::Raised,
        -1 => Raise::BeyondLatest,
        _ => Raise::Unchanged,
    })
}

/// The body of `GET /rooms/{room}/reads`.
#[derive(Debug, Serialize)]
struct Reads {
    room: String,
    reads: BTreeMap<String, u64>,
}

/// `GET /rooms/{room}/reads`: `{"room","reads":{"<user key>":seq}}`.
pub async fn http_reads(
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let room = parse_room(&room)?;
    let all: BTreeMap<String, String> = state
        .redis
        .query(redis::cmd("HGETALL").arg(keys::reads(&room)))
        .await
        .map_err(|_| ApiError::unavailable("reads"))?;
    let reads = all
        .into_iter()
        .filter_map(|(user, seq)| Some((user, seq.parse().ok()?)))
        .collect();
    let body = Reads {
        room: room.as_str().to_owned(),
        reads,
    };
    Ok(axum::Json(body).into_response())
}
