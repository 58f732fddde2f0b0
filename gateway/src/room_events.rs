//! The checks a room event or a reply needs before it is appended: does the
//! message it names exist in the room, and may this sender change it.
//!
//! Both come from the room's message index (`keys::message_index`): the
//! gateway adds each message's id and author when it appends it, the worker
//! removes ids when their messages are trimmed or deleted. The worker applies
//! the event later in stream order; an event that lost a race (its target
//! was deleted or trimmed in between) still takes its `seq` but changes
//! nothing.

use std::collections::HashMap;

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::protocol::{ErrorCode, ProtocolError};
use chat_shared::redis::{RedisError, RedisHandle};

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

/// Checks a reaction: message `id` exists in `room`, and an `add` of an
/// emoji the message does not carry yet finds fewer than
/// [`MAX_DISTINCT_EMOJI`] there. One round trip (the index and the counts
/// share a slot). The worker enforces the bound again when it applies the
/// event, for adds that raced past this check.
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
    let mut pipe = redis::pipe();
    pipe.cmd("HEXISTS")
        .arg(keys::message_index(room))
        .arg(id)
        .cmd("HGET")
        .arg(keys::reactions(room))
        .arg(id);
    let (exists, counts): (bool, Option<String>) = redis.pipe(&pipe).await.map_err(|_| {
        ProtocolError::new(
            ErrorCode::Unavailable,
            "not stored: Redis unavailable; retry",
        )
    })?;
    if !exists {
        return Err(ProtocolError::new(
            ErrorCode::NotFound,
            "no such message in this room's history (unknown, trimmed or deleted)",
        ));
    }
    if !adding {
        return Ok(());
    }
    let counts: HashMap<String, serde_json::Value> = counts
        .and_then(|c| serde_json::from_str(&c).ok())
        .unwrap_or_default();
    if !counts.contains_key(emoji) && counts.len() >= MAX_DISTINCT_EMOJI {
        return Err(ProtocolError::new(
            ErrorCode::TooManyReactions,
            format!("a message carries at most {MAX_DISTINCT_EMOJI} distinct emoji"),
        ));
    }
    Ok(())
}
