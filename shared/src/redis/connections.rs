//! Removing connection entries from Redis: one connection (the gateway that
//! owns it), or all of one gateway's (the janitor for a dead gateway, a
//! gateway starting with the id of a killed predecessor).
//!
//! Every removal goes through [`REMOVE`], which updates the spec's set, the
//! room's gateway counts and the presence records in one call (all keys share
//! the `{connections:<room>}` slot) and reports the users whose last
//! connection went, so the caller can announce their `leave`.

use std::sync::LazyLock;

use redis::Script;

use crate::model::ids::RoomId;
use crate::redis::keys;
use crate::redis::{RedisError, RedisHandle};

/// Most members removed per script call: a huge room never blocks Redis
/// for long.
const CHUNK: usize = 1000;

/// KEYS: `connections:<room>`, room gateways, presence conns, presence
/// users. ARGV: mode, gateway, members…
/// - mode `one`: lower the gateway's count by the members really removed
///   (dropping the field at zero);
/// - mode `all`: drop the gateway's count field;
/// - mode `stale`: leave the counts alone (members found without one).
///
/// Each member's presence record goes too, and its user's count drops; a
/// user at zero is removed and its record returned. Returns `{removed,
/// {left user JSON…}}`.
pub static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local removed = 0
local left = {}
for i = 3, #ARGV do
  local m = ARGV[i]
  removed = removed + redis.call('SREM', KEYS[1], m)
  local u = redis.call('HGET', KEYS[3], m)
  if u then
    redis.call('HDEL', KEYS[3], m)
    local ok, rec = pcall(cjson.decode, u)
    if ok and type(rec) == 'table' and type(rec.key) == 'string' then
      local n = redis.call('HINCRBY', KEYS[4], rec.key, -1)
      if n <= 0 then
        redis.call('HDEL', KEYS[4], rec.key)
        table.insert(left, u)
      end
    end
  end
end
if ARGV[1] == 'one' and removed > 0 then
  local n = redis.call('HINCRBY', KEYS[2], ARGV[2], -removed)
  if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
elseif ARGV[1] == 'all' then
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return {removed, left}
"#,
    )
});

/// What a removal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Members removed from `connections:<room>`.
    pub members: usize,
    /// Stored user records (JSON of [`crate::model::presence::PresenceUser`]) of
    /// the users that have no connection in the room any more.
    pub left: Vec<String>,
}

impl Removed {
    fn add(&mut self, (members, left): (usize, Vec<String>)) {
        self.members += members;
        self.left.extend(left);
    }
}

/// How a removal treats the gateway's connection count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountMode {
    /// Lower it by the members removed.
    One,
    /// Drop it (the gateway is gone from the room).
    All,
    /// Leave it (stale members of gateways whose count is already gone).
    Stale,
}

impl CountMode {
    fn arg(self) -> &'static str {
        match self {
            Self::One => "one",
            Self::All => "all",
            Self::Stale => "stale",
        }
    }
}

/// Removes `members` of `room` (with their presence records) in chunks.
///
/// # Errors
/// Fails when Redis does not answer; what earlier chunks removed stays removed.
pub async fn remove_members(
    redis: &RedisHandle,
    room: &RoomId,
    mode: CountMode,
    gateway: &str,
    members: &[&str],
) -> Result<Removed, RedisError> {
    let mut out = Removed::default();
    // `All` must run once even without members, to drop the count field.
    let chunks: Vec<&[&str]> = if members.is_empty() {
        vec![&[]]
    } else {
        members.chunks(CHUNK).collect()
    };
    for chunk in chunks {
        let mut inv = REMOVE.key(keys::connections(room));
        inv.key(keys::room_gateways(room))
            .key(keys::presence_conns(room))
            .key(keys::presence_users(room))
            .arg(mode.arg())
            .arg(gateway)
            .arg(chunk);
        out.add(redis.script::<(usize, Vec<String>)>(&inv).await?);
    }
    Ok(out)
}

/// Removes every `<gateway>/…` member of `connections:<room>` and of the
/// room's presence records, and the gateway's count in the room's gateway
/// hash.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn remove_gateway_from_room(
    redis: &RedisHandle,
    room: &RoomId,
    gateway: &str,
) -> Result<Removed, RedisError> {
    let prefix = format!("{gateway}/");
    let mut mine = redis.sscan_all(&keys::connections(room)).await?;
    // Presence records without a set member (none are written that way, but
    // a partial manual cleanup could leave some) go as well.
    let records: Vec<String> = redis
        .query(redis::cmd("HKEYS").arg(keys::presence_conns(room)))
        .await?;
    mine.extend(records);
    mine.retain(|m| m.starts_with(&prefix));
    mine.sort_unstable();
    mine.dedup();
    let refs: Vec<&str> = mine.iter().map(String::as_str).collect();
    remove_members(redis, room, CountMode::All, gateway, &refs).await
}
