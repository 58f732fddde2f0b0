//! This gateway's footprint in Redis: its connections and its liveness.
//!
//! Per connection: a member `<gateway>/<conn>` in `connections:<room>` (spec),
//! a count in `chat:room-gateways:{connections:<room>}` (so workers find the
//! owning gateways without scanning connections) and the room in
//! `rooms:active`. Both per-room keys share a slot, so one `MULTI` updates them.
//! Per gateway: a heartbeat in `chat:gateways`, which the janitor uses to remove
//! entries of gateways that died without deregistering.

use chat_shared::envelope::now_us;
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

/// Decrements a room's gateway count and removes the field at zero.
const LEAVE_LUA: &str = r#"
redis.call('SREM', KEYS[1], ARGV[2])
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
return n
"#;

/// Registers a connection.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn register(
    redis: &RedisHandle,
    gateway: &str,
    room: &RoomId,
    conn: &str,
) -> Result<(), RedisError> {
    let member = keys::connection_member(gateway, conn);
    let mut pipe = redis::pipe();
    pipe.atomic()
        .sadd(keys::connections(room), &member)
        .ignore()
        .hincr(keys::room_gateways(room), gateway, 1)
        .ignore();
    redis.pipe::<()>(&pipe).await?;
    // Separate slot: not part of the transaction, and need not be.
    redis
        .query::<()>(
            redis::cmd("SADD")
                .arg(keys::ROOMS_ACTIVE)
                .arg(room.as_str()),
        )
        .await
}

/// Removes a connection.
///
/// # Errors
/// Fails when Redis does not answer; the janitor then cleans up later.
pub async fn unregister(
    redis: &RedisHandle,
    gateway: &str,
    room: &RoomId,
    conn: &str,
) -> Result<(), RedisError> {
    let member = keys::connection_member(gateway, conn);
    let script = Script::new(LEAVE_LUA);
    let mut inv = script.key(keys::connections(room));
    inv.key(keys::room_gateways(room)).arg(gateway).arg(member);
    redis.script::<i64>(&inv).await.map(|_| ())
}

/// Records that this gateway is alive now. Returns `true` when Redis did not
/// know this gateway yet: on any heartbeat but the first, that means Redis lost
/// our registrations (restarted empty, flushed, or the janitor judged us dead)
/// and [`reregister`] must restore them.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn heartbeat(redis: &RedisHandle, gateway: &str) -> Result<bool, RedisError> {
    let added: i64 = redis
        .query(
            redis::cmd("HSET")
                .arg(keys::GATEWAYS)
                .arg(gateway)
                .arg(now_us() / 1000),
        )
        .await?;
    Ok(added == 1)
}

/// Writes every local connection back into Redis (idempotent: set members and
/// absolute counts).
///
/// # Errors
/// Fails when Redis does not answer; the next heartbeat retries.
pub async fn reregister(
    redis: &RedisHandle,
    gateway: &str,
    members: &[(String, Vec<u64>)],
) -> Result<(), RedisError> {
    for (room, conns) in members {
        let Ok(room) = RoomId::parse(room) else {
            continue;
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        for c in conns {
            pipe.sadd(
                keys::connections(&room),
                keys::connection_member(gateway, &c.to_string()),
            )
            .ignore();
        }
        pipe.hset(keys::room_gateways(&room), gateway, conns.len())
            .ignore();
        redis.pipe::<()>(&pipe).await?;
        redis
            .query::<()>(
                redis::cmd("SADD")
                    .arg(keys::ROOMS_ACTIVE)
                    .arg(room.as_str()),
            )
            .await?;
    }
    Ok(())
}

/// Removes this gateway's heartbeat on clean shutdown.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn deregister(redis: &RedisHandle, gateway: &str) -> Result<(), RedisError> {
    redis
        .query::<()>(redis::cmd("HDEL").arg(keys::GATEWAYS).arg(gateway))
        .await
}
