//! Idempotent persistence of one message to its room's history.
//!
//! One Lua call per message touches only keys in the slot of `messages:<room>`:
//! the history list and the room state hash (`seq`, `last_entry`, `epoch`). An
//! entry whose stream id is not above `last_entry` was applied before (a
//! takeover re-processing it): the script then returns the stored record so it
//! can be delivered again, and neither adds a copy nor burns a `seq`.
//!
//! The stored record is JSON built in two steps: serde writes every field but
//! `seq` ([`chat_shared::envelope::StreamEntry::record_prefix`]), and the
//! script appends `,"seq":N}`, because `N` is assigned here, atomically with
//! the append. Decoding and re-encoding with Lua's cjson instead would cost a
//! parse per message and change the JSON (field order, escaping of `/`,
//! numbers); the splice adds one integer field to a serde-made object, and unit
//! tests in `shared` check that the result parses as `MessageRecord`.
//!
//! History is bounded twice: at most `HISTORY_LIMIT` records and at most
//! `HISTORY_MAX_BYTES` of record JSON (the room state keeps a running `bytes`
//! total); the oldest records go first, so the list stays contiguous in `seq`.

use chat_shared::ids::RoomId;
use chat_shared::keys;
use redis::Script;

/// The persistence script.
///
/// KEYS: `messages:<room>`, `chat:room:{messages:<room>}`.
/// ARGV: stream entry id, record prefix (JSON without `,"seq":N}`), history
/// limit, ttl seconds, epoch candidate, message id, how many of the newest
/// records to search for a re-processed entry (a takeover re-processes at most
/// a batch or two, so the whole list never needs scanning), history byte cap
/// (0 = none).
/// Returns `{seq, record, epoch}` when applied, `{0, record or false, epoch}`
/// when it was applied before.
const PERSIST_LUA: &str = r#"
local function older_or_equal(a, b)
  local am, as = string.match(a, "^(%d+)-(%d+)$")
  local bm, bs = string.match(b, "^(%d+)-(%d+)$")
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm end
  return as <= bs
end
local last = redis.call('HGET', KEYS[2], 'last_entry')
if last and older_or_equal(ARGV[1], last) then
  local epoch = redis.call('HGET', KEYS[2], 'epoch') or ARGV[5]
  local needle = '"id":"' .. ARGV[6] .. '"'
  local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[7]), -1)
  for i = #items, 1, -1 do
    if string.find(items[i], needle, 1, true) then
      return {0, items[i], epoch}
    end
  end
  return {0, false, epoch}
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[5])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
redis.call('HSET', KEYS[2], 'last_entry', ARGV[1])
local record = ARGV[2] .. ',"seq":' .. seq .. '}'
local len = redis.call('RPUSH', KEYS[1], record)
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', #record)
local limit, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[8])
while len > limit or (max_bytes > 0 and bytes > max_bytes and len > 1) do
  local old = redis.call('LPOP', KEYS[1])
  bytes = redis.call('HINCRBY', KEYS[2], 'bytes', -#old)
  len = len - 1
end
if bytes < 0 then redis.call('HSET', KEYS[2], 'bytes', 0) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {seq, record, epoch}
"#;

/// The loaded script object (its SHA is computed once).
pub(crate) fn script() -> Script {
    Script::new(PERSIST_LUA)
}

/// How far a room's history may grow, and how long it lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryBounds {
    /// Most records (`HISTORY_LIMIT`).
    pub(crate) limit: u64,
    /// Most bytes of record JSON (`HISTORY_MAX_BYTES`, 0 = none).
    pub(crate) max_bytes: u64,
    /// Expiry after the last message (`HISTORY_TTL`).
    pub(crate) ttl_secs: u64,
}

/// Adds one persist invocation to `pipe`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_to_pipeline(
    pipe: &mut redis::Pipeline,
    script: &Script,
    room: &RoomId,
    entry_id: &str,
    record_prefix: &str,
    bounds: HistoryBounds,
    epoch: &str,
    message_id: &str,
    search_window: u64,
) {
    let mut inv = script.key(keys::messages(room));
    inv.key(keys::room_state(room))
        .arg(entry_id)
        .arg(record_prefix)
        .arg(bounds.limit)
        .arg(bounds.ttl_secs)
        .arg(epoch)
        .arg(message_id)
        .arg(search_window)
        .arg(bounds.max_bytes);
    pipe.invoke_script(&inv);
}

/// What the script answered for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Persisted {
    /// Newly written with this `seq`.
    New {
        seq: u64,
        record: String,
        epoch: String,
    },
    /// Applied before; the stored record if it is still in history.
    Duplicate {
        record: Option<String>,
        epoch: String,
    },
}

impl redis::FromRedisValue for Persisted {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        let (seq, record, epoch): (u64, Option<String>, String) =
            redis::FromRedisValue::from_redis_value(v)?;
        Ok(match (seq, record) {
            (0, record) => Persisted::Duplicate { record, epoch },
            (seq, Some(record)) => Persisted::New { seq, record, epoch },
            (_, None) => return Err("persist script returned a seq without a record".into()),
        })
    }
}
