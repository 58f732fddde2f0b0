//! This gateway's footprint in Redis: its connections and its liveness.
//!
//! Per connection: a member `<gateway>/<conn>` in `connections:<room>` (spec),
//! a count in `chat:room-gateways:{connections:<room>}` (so workers find the
//! owning gateways without scanning connections) and the room in
//! `rooms:active`. Both per-room keys share a slot, so one Lua call updates
//! them, and the count only moves when the set really changed: a repeated or
//! failed registration can never leave the count at zero while a member is
//! still there (which would silently stop delivery to this gateway).
//! Per gateway: a heartbeat in `chat:gateways`, stamped with Redis's own clock
//! so the janitor's liveness check does not depend on clock skew.

use std::sync::LazyLock;

use chat_shared::connections::remove_gateway_from_room;
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

/// Adds members (ARGV[2..]) and raises the gateway's count (ARGV[1]) by the
/// number actually added.
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local added = 0
for i = 2, #ARGV do added = added + redis.call('SADD', KEYS[1], ARGV[i]) end
if added > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], added) end
return added
"#,
    )
});

/// Removes a member and lowers the count only if it was there; drops the
/// field at zero.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SREM', KEYS[1], ARGV[2]) == 1 then
  local n = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
  if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
end
return 1
"#,
    )
});

/// Heartbeat at Redis's time. Returns 1 when the gateway must (re-)register
/// its connections: Redis did not know it, or the janitor marked it evicted
/// (a negative value: it removed the gateway's entries while the gateway was
/// beating again, see the janitor's eviction step).
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
redis.call('HSET', KEYS[1], ARGV[1], ms)
if old == nil or old < 0 then return 1 end
return 0
"#,
    )
});

/// Milliseconds since the gateway's last heartbeat, on Redis's clock; `nil`
/// when it has none (or is marked evicted).
static HEARTBEAT_AGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local beat = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if beat == nil or beat < 0 then return false end
return ms - beat
"#,
    )
});

async fn join(
    redis: &RedisHandle,
    gateway: &str,
    room: &RoomId,
    conns: &[String],
) -> Result<(), RedisError> {
    let mut inv = JOIN.key(keys::connections(room));
    inv.key(keys::room_gateways(room)).arg(gateway);
    for c in conns {
        inv.arg(keys::connection_member(gateway, c));
    }
    redis.script::<i64>(&inv).await?;
    // Separate slot: not part of the script, and need not be.
    redis
        .query::<()>(
            redis::cmd("SADD")
                .arg(keys::ROOMS_ACTIVE)
                .arg(room.as_str()),
        )
        .await
}

/// The per-process part of connection ids: a gateway restarted with the same
/// `GATEWAY_ID` never reuses a member name of its previous incarnation.
static BOOT_NONCE: LazyLock<u32> = LazyLock::new(|| {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id()) as u32
});

/// The `<conn>` part of a `connections:<room>` member for local connection `id`.
pub fn conn_key(id: u64) -> String {
    format!("{:08x}-{id}", *BOOT_NONCE)
}

/// Registers a connection.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn add_connection(
    redis: &RedisHandle,
    gateway: &str,
    room: &RoomId,
    conn: &str,
) -> Result<(), RedisError> {
    join(redis, gateway, room, &[conn.to_owned()]).await
}

/// Removes a connection (a no-op for one that was never registered).
///
/// # Errors
/// Fails when Redis does not answer; the janitor then cleans up later.
pub async fn remove_connection(
    redis: &RedisHandle,
    gateway: &str,
    room: &RoomId,
    conn: &str,
) -> Result<(), RedisError> {
    let mut inv = LEAVE.key(keys::connections(room));
    inv.key(keys::room_gateways(room))
        .arg(gateway)
        .arg(keys::connection_member(gateway, conn));
    redis.script::<i64>(&inv).await.map(|_| ())
}

/// Records that this gateway is alive now. Returns `true` when Redis did not
/// know this gateway yet or the janitor evicted it: on any heartbeat but the
/// first, that means Redis lost our registrations (restarted empty, flushed,
/// or the janitor judged us dead) and [`restore_connections`] must restore
/// them.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn heartbeat(redis: &RedisHandle, gateway: &str) -> Result<bool, RedisError> {
    let mut inv = HEARTBEAT.key(keys::GATEWAYS);
    inv.arg(gateway);
    Ok(redis.script::<i64>(&inv).await? == 1)
}

/// Writes every local connection back into Redis. Idempotent: only members
/// that are missing are added, and the count rises by exactly that many.
///
/// # Errors
/// Fails when Redis does not answer; the next heartbeat retries.
pub async fn restore_connections(
    redis: &RedisHandle,
    gateway: &str,
    members: &[(String, Vec<String>)],
) -> Result<(), RedisError> {
    for (room, conns) in members {
        let Ok(room) = RoomId::parse(room) else {
            continue;
        };
        join(redis, gateway, &room, conns).await?;
    }
    Ok(())
}

/// How long ago (ms, Redis clock) this gateway id last beat; `None` when it
/// has no live heartbeat.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn heartbeat_age_ms(
    redis: &RedisHandle,
    gateway: &str,
) -> Result<Option<u64>, RedisError> {
    let mut inv = HEARTBEAT_AGE.key(keys::GATEWAYS);
    inv.arg(gateway);
    redis.script::<Option<u64>>(&inv).await
}

/// Re-adds this gateway's rooms to `rooms:active`, so a room the janitor
/// dropped in a race with a join (it found no connection, then removed the
/// room) is back within one heartbeat.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn assert_rooms(redis: &RedisHandle, rooms: &[String]) -> Result<(), RedisError> {
    for chunk in rooms.chunks(1000) {
        redis
            .query::<()>(redis::cmd("SADD").arg(keys::ROOMS_ACTIVE).arg(chunk))
            .await?;
    }
    Ok(())
}

/// Removes the connection entries a previous process with this same
/// `GATEWAY_ID` left behind (it was killed and this one started before the
/// janitor judged it dead). Run before accepting connections. Returns how
/// many entries were removed.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn purge_previous(redis: &RedisHandle, gateway: &str) -> Result<usize, RedisError> {
    let mut removed = 0;
    for room in redis.sscan_all(keys::ROOMS_ACTIVE).await? {
        if let Ok(room) = RoomId::parse(&room) {
            removed += remove_gateway_from_room(redis, &room, gateway).await?;
        }
    }
    Ok(removed)
}

/// Removes this gateway's heartbeat on clean shutdown.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn remove_heartbeat(redis: &RedisHandle, gateway: &str) -> Result<(), RedisError> {
    redis
        .query::<()>(redis::cmd("HDEL").arg(keys::GATEWAYS).arg(gateway))
        .await
}
