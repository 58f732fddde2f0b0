//! This gateway's room index in Redis (`chat:gateway-rooms:{<gateway>}`):
//! the rooms where it has connections, so the janitor evicting it after a
//! crash visits those rooms instead of every active one.
//!
//! A room is added with each registration (in the same round trip as
//! `rooms:active`, see [`crate::presence`]) and the whole index is rewritten
//! to the local rooms on every heartbeat: rooms this gateway no longer holds
//! drop out, and a removal that raced a new registration is repaired within
//! one heartbeat. The janitor's slower full sweep covers whatever the index
//! misses in between. The index goes on clean shutdown and with the
//! gateway's eviction.

use std::collections::HashSet;

use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};

/// Re-adds this gateway's `rooms` to `rooms:active` (a room the janitor
/// dropped in a race with a join is back within one heartbeat) and makes
/// the index hold exactly them.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn assert_rooms(
    redis: &RedisHandle,
    gateway: &str,
    rooms: &[String],
) -> Result<(), RedisError> {
    let index = keys::gateway_rooms(gateway);
    for chunk in rooms.chunks(1000) {
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(keys::ROOMS_ACTIVE).arg(chunk).ignore();
        pipe.cmd("SADD").arg(&index).arg(chunk).ignore();
        redis.pipe::<()>(&pipe).await?;
    }
    let local: HashSet<&str> = rooms.iter().map(String::as_str).collect();
    let indexed = redis.sscan_all(&index).await?;
    let gone: Vec<&str> = indexed
        .iter()
        .map(String::as_str)
        .filter(|r| !local.contains(r))
        .collect();
    for chunk in gone.chunks(1000) {
        redis
            .query::<()>(redis::cmd("SREM").arg(&index).arg(chunk))
            .await?;
    }
    Ok(())
}

/// Deletes the index on clean shutdown (every connection is deregistered).
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn forget(redis: &RedisHandle, gateway: &str) -> Result<(), RedisError> {
    redis
        .query::<()>(redis::cmd("DEL").arg(keys::gateway_rooms(gateway)))
        .await
}
