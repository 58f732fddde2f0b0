//! Connection entries of one gateway in Redis, as seen from outside that
//! gateway's process: used by the janitor (a dead gateway) and by a gateway
//! starting with the id of a killed predecessor.

use crate::ids::RoomId;
use crate::keys;
use crate::redis::{RedisError, RedisHandle};

/// Removes every `<gateway>/…` member of `connections:<room>` and the
/// gateway's count in the room's gateway hash, in one transaction (both keys
/// share a slot). Returns how many members were removed.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn remove_gateway_from_room(
    redis: &RedisHandle,
    room: &RoomId,
    gateway: &str,
) -> Result<usize, RedisError> {
    let members = redis.sscan_all(&keys::connections(room)).await?;
    let prefix = format!("{gateway}/");
    let mine: Vec<&String> = members.iter().filter(|m| m.starts_with(&prefix)).collect();
    let mut pipe = redis::pipe();
    pipe.atomic();
    if !mine.is_empty() {
        pipe.cmd("SREM")
            .arg(keys::connections(room))
            .arg(&mine)
            .ignore();
    }
    pipe.cmd("HDEL")
        .arg(keys::room_gateways(room))
        .arg(gateway)
        .ignore();
    redis.pipe::<()>(&pipe).await?;
    Ok(mine.len())
}
