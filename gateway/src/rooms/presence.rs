//! This gateway's footprint in Redis: its connections and its liveness.
//!
//! Per connection: a member `<gateway>/<conn>` in `connections:<room>` (spec),
//! a count in `chat:room-gateways:{connections:<room>}` (so workers find the
//! owning gateways without scanning connections) and the room in
//! `rooms:active`. Both per-room keys share a slot, so one Lua call updates
//! them, and the count only moves when the set really changed: a repeated or
//! failed registration can never leave the count at zero while a member is
//! still there (which would silently stop delivery to this gateway).
//! Beside them, per connection, its user's presence record and count (see
//! [`chat_shared::presence`]), written by the same scripts: a user's first
//! connection is reported as joined, its last one as left.
//! Per gateway: its rooms in `chat:gateway-rooms:{<gateway>}` (see
//! [`crate::rooms::room_index`]) and a heartbeat in `chat:gateways`, stamped with Redis's own clock
//! so the janitor's liveness check does not depend on clock skew.

use std::sync::LazyLock;

use chat_shared::connections::{remove_gateway_from_room, remove_members, CountMode, Removed};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::presence::PresenceUser;
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

/// Adds members and raises the gateway's count (ARGV[1]) by the number
/// actually added. ARGV[2..] are triples: member, user key, user JSON. A
/// member's presence record is written once (`HSETNX`), and only then does
/// its user's count rise. Returns one answer per triple, in order: the
/// user's record when its count went from 0 to 1 (that member's user
/// joined), else `""`.
const JOIN_LUA: &str = r#"
local added = 0
local out = {}
for i = 2, #ARGV, 3 do
  local joined = ''
  added = added + redis.call('SADD', KEYS[1], ARGV[i])
  if redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 2]) == 1 then
    if redis.call('HINCRBY', KEYS[4], ARGV[i + 1], 1) == 1 then
      joined = ARGV[i + 2]
    end
  end
  out[#out + 1] = joined
end
if added > 0 then redis.call('HINCRBY', KEYS[2], ARGV[1], added) end
return out
"#;

/// The loaded [`JOIN_LUA`] (its SHA is computed once).
static JOIN: LazyLock<Script> = LazyLock::new(|| Script::new(JOIN_LUA));

/// Members per script call: a restore of a huge room, or a large batch of
/// one room, never blocks Redis long.
const JOIN_CHUNK: usize = 1000;

/// Heartbeat at Redis's time. KEYS: the gateway registry, the janitor's
/// evictions hash (same slot). Returns 1 when the gateway must
/// (re-)register its connections:
/// - Redis did not know it (restarted empty, flushed, or the janitor
///   deleted a stale record);
/// - the janitor marked it evicted (a negative value: it removed the
///   gateway's entries while the gateway was beating again);
/// - a janitor sweep is removing its entries, or was cut off while doing so
///   (the gateway is in the evictions hash). Then every heartbeat says so
///   until the janitor clears the mark: some of the gateway's rooms may have
///   lost its entries, and only a re-registration after the last removal
///   brings them back. Re-registering is idempotent, so repeating it costs
///   round trips, never duplicates.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
redis.call('HSET', KEYS[1], ARGV[1], ms)
if old == nil or old < 0 then return 1 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
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

/// Registers `conns` (conn key and user) of `room`; returns the stored
/// records of the users that joined.
async fn join(
    redis: &RedisHandle,
    gateway: &str,
    room: &RoomId,
    conns: &[(String, PresenceUser)],
) -> Result<Vec<String>, RedisError> {
    let mut joined = Vec::new();
    for chunk in conns.chunks(JOIN_CHUNK) {
        let regs: Vec<Registration> = chunk
            .iter()
            .map(|(conn, user)| Registration {
                room: room.clone(),
                conn: conn.clone(),
                user: user.clone(),
            })
            .collect();
        joined.extend(
            add_connections(redis, gateway, &regs)
                .await?
                .into_iter()
                .flatten(),
        );
    }
    Ok(joined)
}

/// One connection to register: its room, its `<conn>` key and its user.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The room joined.
    pub room: RoomId,
    /// The connection's key ([`conn_key`]).
    pub conn: String,
    /// Who is connected (the presence record).
    pub user: PresenceUser,
}

/// Registers `regs`, of any rooms, in one pipeline: one [`JOIN`] call per
/// room (per [`JOIN_CHUNK`] members), then one `SADD` each to `rooms:active`
/// and to this gateway's room index for all their rooms. Returns, for each
/// registration in order, its user's stored record when this was the
/// user's first connection to the room (a join).
///
/// Every command is idempotent, so the pipeline is sent again whole after a
/// `NOSCRIPT` (Redis restarted or flushed its scripts). On a cluster the
/// pipeline is cut into runs of one slot each ([`chat_shared::redis::conn`]);
/// the rooms' keys and the two sets may each live on another master.
///
/// # Errors
/// Fails when Redis does not answer; then none of `regs` is known to be
/// registered (some may be: removing them is harmless).
pub async fn add_connections(
    redis: &RedisHandle,
    gateway: &str,
    regs: &[Registration],
) -> Result<Vec<Option<String>>, RedisError> {
    // The registrations of each room, in order of first appearance.
    let mut rooms: Vec<(&RoomId, Vec<usize>)> = Vec::new();
    for (i, reg) in regs.iter().enumerate() {
        match rooms.iter_mut().find(|(room, _)| **room == reg.room) {
            Some((_, members)) => members.push(i),
            None => rooms.push((&reg.room, vec![i])),
        }
    }
    let mut pipe = redis::pipe();
    let mut calls: Vec<&[usize]> = Vec::new();
    for (room, members) in &rooms {
        for chunk in members.chunks(JOIN_CHUNK) {
            let mut inv = JOIN.key(keys::connections(room));
            inv.key(keys::room_gateways(room))
                .key(keys::presence_conns(room))
                .key(keys::presence_users(room))
                .arg(gateway);
            for &i in chunk {
                let reg = &regs[i];
                inv.arg(keys::connection_member(gateway, &reg.conn))
                    .arg(&reg.user.key)
                    .arg(reg.user.to_json());
            }
            pipe.invoke_script(&inv);
            calls.push(chunk);
        }
    }
    // Separate slots: not part of the script, and need not be. The room
    // index lets the janitor evict this gateway room by room (room_index).
    let names: Vec<&str> = rooms.iter().map(|(room, _)| room.as_str()).collect();
    pipe.cmd("SADD")
        .arg(keys::ROOMS_ACTIVE)
        .arg(&names)
        .ignore();
    pipe.cmd("SADD")
        .arg(keys::gateway_rooms(gateway))
        .arg(&names)
        .ignore();
    let replies: Vec<Vec<String>> = match redis.pipe(&pipe).await {
        Err(e) if e.is_no_script() => {
            redis
                .query::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(JOIN_LUA))
                .await?;
            redis.pipe(&pipe).await?
        }
        other => other?,
    };
    let mut joined = vec![None; regs.len()];
    for (chunk, answers) in calls.iter().zip(replies) {
        for (&i, answer) in chunk.iter().zip(answers) {
            joined[i] = (!answer.is_empty()).then_some(answer);
        }
    }
    Ok(joined)
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

/// The local connection id of a `connections:<room>` member, when the member
/// is one of this process's connections on `gateway`.
pub fn local_conn(gateway: &str, member: &str) -> Option<u64> {
    let key = member.strip_prefix(gateway)?.strip_prefix('/')?;
    let id: u64 = key.rsplit_once('-')?.1.parse().ok()?;
    (conn_key(id) == key).then_some(id)
}

/// Removes a connection (a no-op for one that was never registered) and its
/// presence record. [`Removed::left`] holds the user's record when this was
/// its last connection to the room.
///
/// # Errors
/// Fails when Redis does not answer; the janitor then cleans up later.
pub async fn remove_connection(
    redis: &RedisHandle,
    gateway: &str,
    room: &RoomId,
    conn: &str,
) -> Result<Removed, RedisError> {
    let member = keys::connection_member(gateway, conn);
    remove_members(redis, room, CountMode::One, gateway, &[member.as_str()]).await
}

/// Records that this gateway is alive now. Returns `true` when Redis did not
/// know this gateway yet or the janitor evicted it (or is evicting it, or
/// was cut off while evicting it): on any heartbeat but the
/// first, that means Redis lost our registrations (restarted empty, flushed,
/// or the janitor judged us dead) and [`restore_connections`] must restore
/// them.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn heartbeat(redis: &RedisHandle, gateway: &str) -> Result<bool, RedisError> {
    let mut inv = HEARTBEAT.key(keys::GATEWAYS);
    inv.key(keys::GATEWAY_EVICTIONS).arg(gateway);
    Ok(redis.script::<i64>(&inv).await? == 1)
}

/// Writes every local connection back into Redis. Idempotent: only members
/// that are missing are added, and the counts rise by exactly that many.
/// Returns, per room, the records of users that joined again (Redis had
/// lost them, or the janitor had announced them as left).
///
/// # Errors
/// Fails when Redis does not answer; the next heartbeat retries.
pub async fn restore_connections(
    redis: &RedisHandle,
    gateway: &str,
    members: &[(String, Vec<(String, PresenceUser)>)],
) -> Result<Vec<(RoomId, Vec<String>)>, RedisError> {
    let mut joined = Vec::new();
    for (room, conns) in members {
        let Ok(room) = RoomId::parse(room) else {
            continue;
        };
        let users = join(redis, gateway, &room, conns).await?;
        if !users.is_empty() {
            joined.push((room, users));
        }
    }
    Ok(joined)
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

/// Removes the connection entries a previous process with this same
/// `GATEWAY_ID` left behind (it was killed and this one started before the
/// janitor judged it dead). Run before accepting connections. Returns, per
/// room, what was removed (its users that left are announced by the caller).
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn purge_previous(
    redis: &RedisHandle,
    gateway: &str,
) -> Result<Vec<(RoomId, Removed)>, RedisError> {
    let mut removed = Vec::new();
    for room in redis.sscan_all(keys::ROOMS_ACTIVE).await? {
        if let Ok(room) = RoomId::parse(&room) {
            let r = remove_gateway_from_room(redis, &room, gateway).await?;
            if r.members > 0 || !r.left.is_empty() {
                removed.push((room, r));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_conn_reads_back_only_this_process_members() {
        let member = keys::connection_member("gw-1", &conn_key(42));
        assert_eq!(local_conn("gw-1", &member), Some(42));
        assert_eq!(local_conn("gw-2", &member), None);
        assert_eq!(local_conn("gw", &member), None);
        assert_eq!(local_conn("gw-1", "gw-1/00000000-42x"), None);
        // Another incarnation of this gateway id (another nonce).
        let other = format!("gw-1/{:08x}-42", BOOT_NONCE.wrapping_add(1));
        assert_eq!(local_conn("gw-1", &other), None);
    }
}
