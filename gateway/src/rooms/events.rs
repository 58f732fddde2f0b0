//! The checks a room event or a reply needs before it is appended: does the
//! message it names exist in the room, and may this sender change it.
//!
//! Both come from the room's message index (`keys::message_index`): the
//! gateway adds each message's id and author when it appends it, the worker
//! removes ids when their messages are trimmed or deleted. The worker applies
//! the event later in stream order; an event that lost a race (its target
//! was deleted or trimmed in between) still takes its `seq` but changes
//! nothing.

use std::sync::LazyLock;

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::protocol::{ErrorCode, ProtocolError};
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

/// The author of message `id` in `room` (their user key: user id with
/// authentication, else display name), or `None` when the room's history
/// does not hold it.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn author_of(
    redis: &RedisHandle,
    room: &RoomId,
    id: &str,
) -> Result<Option<String>, RedisError> {
    let entry: Option<String> = redis
        .query(redis::cmd("HGET").arg(keys::message_index(room)).arg(id))
        .await?;
    Ok(entry.map(|e| match e.split_once(':') {
        Some((_, author)) => author.to_owned(),
        None => e,
    }))
}

/// What a sender may do to an existing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Edit or delete: the author or a moderator only.
    Own,
    /// React: anyone.
    Any,
}

/// Checks that message `id` exists in `room` (a `reply_to` target).
///
/// # Errors
/// `not_found`, or `unavailable` when Redis does not answer.
pub async fn exists(redis: &RedisHandle, room: &RoomId, id: &str) -> Result<(), ProtocolError> {
    check(redis, room, id, "", false, Change::Any).await
}

/// Checks that message `id` exists in `room` and that `sender` (a user key)
/// may make `change` to it.
///
/// # Errors
/// `not_found`, `forbidden`, or `unavailable` when Redis does not answer.
pub async fn check(
    redis: &RedisHandle,
    room: &RoomId,
    id: &str,
    sender: &str,
    moderator: bool,
    change: Change,
) -> Result<(), ProtocolError> {
    match author_of(redis, room, id).await {
        Err(_) => Err(ProtocolError::new(
            ErrorCode::Unavailable,
            "not stored: Redis unavailable; retry",
        )),
        Ok(None) => Err(ProtocolError::new(
            ErrorCode::NotFound,
            "no such message in this room's history (unknown, trimmed or deleted)",
        )),
        Ok(Some(author)) if change == Change::Own && author != sender && !moderator => {
            Err(ProtocolError::new(
                ErrorCode::Forbidden,
                "only the author or a moderator may change this message",
            ))
        }
        Ok(Some(_)) => Ok(()),
    }
}

/// Most distinct emoji (each with a count above 0) on one message.
pub const MAX_DISTINCT_EMOJI: usize = 20;

/// KEYS: the room's message index, the message's emoji set, the room's
/// history list. ARGV: message id, emoji, `add` or `remove`, the bound.
/// Returns `ok`, `not_found` or `too_many`.
static RESERVE_EMOJI: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'not_found' end
if ARGV[3] ~= 'add' or redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 1 then return 'ok' end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 'too_many' end
redis.call('SADD', KEYS[2], ARGV[2])
local ttl = redis.call('PTTL', KEYS[3])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) else redis.call('EXPIRE', KEYS[2], 86400) end
return 'ok'
"#,
    )
});

/// Checks a reaction: message `id` exists in `room`, and an `add` of an
/// emoji the message does not carry yet finds room for it: fewer than
/// [`MAX_DISTINCT_EMOJI`] emoji in use. The emoji is then reserved in the
/// message's emoji set, atomically, so two racing adds of a 21st and a 22nd
/// cannot both pass; the worker keeps the set in step with the counts.
///
/// # Errors
/// `not_found`, `too_many_reactions`, or `unavailable` when Redis does not
/// answer.
pub async fn check_reaction(
    redis: &RedisHandle,
    room: &RoomId,
    id: &str,
    emoji: &str,
    adding: bool,
) -> Result<(), ProtocolError> {
    let mut inv = RESERVE_EMOJI.key(keys::message_index(room));
    inv.key(keys::reaction_emoji(room, id))
        .key(keys::messages(room))
        .arg(id)
        .arg(emoji)
        .arg(if adding { "add" } else { "remove" })
        .arg(MAX_DISTINCT_EMOJI);
    let answer: String = redis.script(&inv).await.map_err(|_| {
        ProtocolError::new(
            ErrorCode::Unavailable,
            "not stored: Redis unavailable; retry",
        )
    })?;
    match answer.as_str() {
        "ok" => Ok(()),
        "too_many" => Err(ProtocolError::new(
            ErrorCode::TooManyReactions,
            format!("a message carries at most {MAX_DISTINCT_EMOJI} distinct emoji"),
        )),
        _ => Err(ProtocolError::new(
            ErrorCode::NotFound,
            "no such message in this room's history (unknown, trimmed or deleted)",
        )),
    }
}
