//! Idempotent persistence of one message to its room's history.
//!
//! One Lua call per message touches only keys in the slot of `messages:<room>`:
//! the history list, the room state hash (`seq`, `last_entry`, `epoch`) and
//! the room's record of applied entries (`chat:applied:{messages:<room>}`).
//! An entry applied before (a takeover or a retry re-processing it) is
//! recognised exactly: it is in the record of applied entries (every entry
//! persisted and not yet acked: each batch's ack empties it of that batch's
//! entries, and it keeps at most the search window's newest), or, below
//! `last_entry` and absent from the record, its own record is among the
//! newest of history (applied by a worker that kept no record). The script
//! then returns the stored record so it can be delivered again, and neither
//! adds a copy nor burns a `seq`. An entry below `last_entry` that is in
//! neither was **never** applied (it reached the worker after later entries
//! of its room: a stray late read of an older connection, an entry stranded
//! in another consumer's pending list) and is applied now, out of stream
//! order, rather than acked away as a duplicate (issue 23, path 1). The
//! older rule, "at or below `last_entry` means applied", lost such entries.
//!
//! The stored record is JSON built in two steps: serde writes every field but
//! `seq` ([`chat_shared::envelope::StreamEntry::record_prefix`]), and the
//! script appends `,"seq":N}`, because `N` is assigned here, atomically with
//! the append. Decoding and re-encoding with Lua's cjson instead would cost a
//! parse per message and change the JSON (field order, escaping of `/`,
//! numbers); the splice adds one integer field to a serde-made object, and unit
//! tests in `shared` check that the result parses as `MessageRecord`.
//!
//! Room events (edit, delete, react) go through the same script: see
//! [`PERSIST_LUA`] for how they change their target.
//!
//! The room's keys get their `HISTORY_TTL` once per batch and room
//! ([`add_expiry`], after the batch's script calls), not once per message.
//!
//! History is bounded twice: at most `HISTORY_LIMIT` records and at most
//! `HISTORY_MAX_BYTES` of record JSON (the room state keeps a running `bytes`
//! total); the oldest records go first, so the list stays contiguous in `seq`.

use chat_shared::envelope::{EventKind, StreamEntry};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::protocol::ReactOp;

use crate::lua;
use redis::Script;

/// The persistence script.
///
/// KEYS: `messages:<room>`, `chat:room:{messages:<room>}`, the room's
/// message index, the room's reactions, the room's applied entries.
/// ARGV: stream entry id, record prefix (JSON without `,"seq":N}`), history
/// limit, epoch candidate, the entry's id (a message's `id`, an
/// event's `event_id`), how many of the newest records to search for a
/// re-processed entry (a takeover re-processes at most a batch or two, so the
/// whole list never needs scanning; also the cap of the applied record), history byte cap (0 = none), mode
/// (`msg`, `edit`, `delete`, `react`), target message id, user key (the
/// author of a message, the reactor of a reaction), then for an edit the new
/// text and `edited_at`, for a reaction the emoji, `add` or `remove`, and
/// the history TTL in seconds.
///
/// Reactions cost the same whatever the number of reactors: the record holds
/// the counts (`{"<emoji>":n}`, at most 20 emoji), the reactions hash holds
/// the same counts per message, who reacted is one set per message
/// (`<reactions key>:<message id>`, members `<emoji>\n<user>`), so an add or
/// remove is one `SADD`/`SREM`, never a decode of every reactor; and the
/// emoji in use are one more set (`…:<message id>:emoji`, at most 20): the
/// gateway reserves a new emoji there atomically before it acks an add, and
/// the worker takes it out when its count drops to 0.
/// Returns `{seq, record, epoch}` when applied, `{0, record or false, epoch}`
/// when it was applied before.
///
/// A room event changes its target in place (the record is decoded and
/// re-encoded with cjson, `seq` kept last) when the target is still in
/// history, and is appended as a record of its own either way: it was acked
/// and holds a `seq`. Every record ends with `"seq":N}`, and history is
/// contiguous in `seq`, so a target is found from its indexed `seq` without
/// a scan.
/// (Prefixed with [`crate::lua::STREAM_ID_CMP`].)
const PERSIST_LUA: &str = r#"
local MAX_EMOJI = 20
local function seq_of(rec) return tonumber(string.match(rec, '"seq":(%d+)}$')) end
local function is_event(rec) return string.sub(rec, 1, 9) == '{"type":"' end
local mode = ARGV[8]
local window = tonumber(ARGV[6])
-- The position and record of the record with `seq` tseq, if still in history.
local function at_seq(tseq)
  local first = redis.call('LINDEX', KEYS[1], 0)
  if not first then return nil end
  local pos = tseq - (seq_of(first) or tseq + 1)
  if pos < 0 then return nil end
  local rec = redis.call('LINDEX', KEYS[1], pos)
  if not rec or seq_of(rec) ~= tseq then return nil end
  return pos, rec
end
local last = redis.call('HGET', KEYS[2], 'last_entry')
local applied = redis.call('ZSCORE', KEYS[5], ARGV[1])
if applied then
  local epoch = redis.call('HGET', KEYS[2], 'epoch') or ARGV[4]
  local _, rec = at_seq(tonumber(applied))
  return {0, rec or false, epoch}
end
if last and id_cmp(ARGV[1], last) <= 0 then
  -- Not in the exact record: applied before that record existed (an
  -- older worker), or never applied (an entry that reached this worker
  -- after later entries of its room). The newest records tell which.
  local epoch = redis.call('HGET', KEYS[2], 'epoch') or ARGV[4]
  local needle = '"id":"' .. ARGV[5] .. '"'
  if mode ~= 'msg' then needle = '"event_id":"' .. ARGV[5] .. '"' end
  local items = redis.call('LRANGE', KEYS[1], -window, -1)
  for i = #items, 1, -1 do
    if (mode ~= 'msg') == is_event(items[i]) and string.find(items[i], needle, 1, true) then
      return {0, items[i], epoch}
    end
  end
  -- Never applied: applied now, out of stream order but never lost.
end
-- The target's position, record and seq, if it is still in history.
local function locate(target)
  local v = redis.call('HGET', KEYS[3], target)
  local tseq = v and tonumber(string.match(v, '^(%d+):'))
  if not tseq then return nil end
  local pos, rec = at_seq(tseq)
  if not pos then return nil end
  return pos, rec, tseq
end
local function replace(pos, old, new)
  redis.call('LSET', KEYS[1], pos, new)
  redis.call('HINCRBY', KEYS[2], 'bytes', #new - #old)
end
-- cjson keeps 14 significant digits: an attachment `size` up to 2^53 - 1
-- would come back as 1.1258999068426e+15 after a decode and re-encode. Sizes
-- travel through cjson as strings and are put back as they were. (`"size":`
-- cannot occur unescaped inside a JSON string, so only the field matches.)
local function decode(rec)
  return cjson.decode((string.gsub(rec, '"size":(%d+)', '"size":"~n~%1"')))
end
local function encode(t, tseq)
  t.seq = nil
  local json = string.gsub(cjson.encode(t), '"size":"~n~(%d+)"', '"size":%1')
  return string.sub(json, 1, -2) .. ',"seq":' .. tseq .. '}'
end
local function apply(target)
  local pos, old, tseq = locate(target)
  if mode == 'react' then
    local count = 0
    if pos then
      local t = decode(old)
      if t.deleted then return ',"count":0' end
      local emoji, user = ARGV[11], ARGV[10]
      local counts = t.reactions or {}
      count = tonumber(counts[emoji] or 0)
      local reactors = KEYS[4] .. ':' .. target
      local emojis = reactors .. ':emoji'
      local member = emoji .. '\n' .. user
      local changed = false
      if ARGV[12] == 'add' then
        -- The gateway reserved the emoji in the message's emoji set (at most
        -- 20); an add whose emoji is not there (a stale check) and finds the
        -- set full changes nothing (it keeps its seq, like an event on a
        -- deleted target).
        local room_for_it = count > 0 or redis.call('SISMEMBER', emojis, emoji) == 1
          or redis.call('SCARD', emojis) < MAX_EMOJI
        if room_for_it and redis.call('SADD', reactors, member) == 1 then
          count = count + 1; changed = true
          redis.call('EXPIRE', reactors, ARGV[13])
          redis.call('SADD', emojis, emoji)
          redis.call('EXPIRE', emojis, ARGV[13])
        end
      elseif redis.call('SREM', reactors, member) == 1 then
        count = count - 1; changed = true
        if count <= 0 then redis.call('SREM', emojis, emoji) end
      end
      if changed then
        if count > 0 then counts[emoji] = count else counts[emoji] = nil end
        if next(counts) then
          t.reactions = counts
          redis.call('HSET', KEYS[4], target, cjson.encode(counts))
        else
          t.reactions = nil
          redis.call('HDEL', KEYS[4], target)
        end
        replace(pos, old, encode(t, tseq))
      end
    end
    return ',"count":' .. count
  end
  if not pos then return '' end
  local t = decode(old)
  if t.deleted then return '' end
  if mode == 'edit' then
    t.message = ARGV[11]
    t.edited_at = ARGV[12]
    replace(pos, old, encode(t, tseq))
  elseif mode == 'delete' then
    replace(pos, old, encode({id = t.id, room = t.room, deleted = true}, tseq))
    redis.call('HDEL', KEYS[3], target)
    redis.call('HDEL', KEYS[4], target)
    redis.call('UNLINK', KEYS[4] .. ':' .. target, KEYS[4] .. ':' .. target .. ':emoji')
  end
  return ''
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[4])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not last or id_cmp(ARGV[1], last) > 0 then
  redis.call('HSET', KEYS[2], 'last_entry', ARGV[1])
end
redis.call('ZADD', KEYS[5], seq, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -(window + 1))
local record
if mode == 'msg' then
  record = ARGV[2] .. ',"seq":' .. seq .. '}'
  redis.call('HSET', KEYS[3], ARGV[5], seq .. ':' .. ARGV[10])
else
  record = ARGV[2] .. apply(ARGV[9]) .. ',"seq":' .. seq .. '}'
end
local len = redis.call('RPUSH', KEYS[1], record)
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', #record)
local limit, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[7])
while len > limit or (max_bytes > 0 and bytes > max_bytes and len > 1) do
  local old = redis.call('LPOP', KEYS[1])
  bytes = redis.call('HINCRBY', KEYS[2], 'bytes', -#old)
  len = len - 1
  if not is_event(old) then
    local id = string.match(old, '"id":"([^"]*)"')
    if id then
      redis.call('HDEL', KEYS[3], id)
      redis.call('HDEL', KEYS[4], id)
      redis.call('UNLINK', KEYS[4] .. ':' .. id, KEYS[4] .. ':' .. id .. ':emoji')
    end
  end
end
if bytes < 0 then redis.call('HSET', KEYS[2], 'bytes', 0) end
return {seq, record, epoch}
"#;

/// The loaded script object (its SHA is computed once).
pub(crate) fn script() -> Script {
    Script::new(&lua::with_prelude(lua::STREAM_ID_CMP, PERSIST_LUA))
}

/// How far a room's history may grow (how long it lives is [`add_expiry`]'s).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryBounds {
    /// Most records (`HISTORY_LIMIT`).
    pub(crate) limit: u64,
    /// Most bytes of record JSON (`HISTORY_MAX_BYTES`, 0 = none).
    pub(crate) max_bytes: u64,
    /// How long history lives (`HISTORY_TTL`), for keys made per message.
    pub(crate) ttl_secs: u64,
}

/// Adds the expiry of one room's history keys (history list, sequence
/// state, message index, reactions, applied entries) to `pipe`: `HISTORY_TTL` from now, once
/// per batch and room after that batch's script calls.
pub(crate) fn add_expiry(pipe: &mut redis::Pipeline, room: &RoomId, ttl_secs: u64) {
    for key in [
        keys::messages(room),
        keys::room_state(room),
        keys::message_index(room),
        keys::reactions(room),
        keys::applied(room),
    ] {
        pipe.expire(key, ttl_secs as i64).ignore();
    }
}

/// Adds one persist invocation to `pipe`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_to_pipeline(
    pipe: &mut redis::Pipeline,
    script: &Script,
    room: &RoomId,
    entry_id: &str,
    entry: &StreamEntry,
    bounds: HistoryBounds,
    epoch: &str,
    search_window: u64,
) {
    let mut inv = script.key(keys::messages(room));
    inv.key(keys::room_state(room))
        .key(keys::message_index(room))
        .key(keys::reactions(room))
        .key(keys::applied(room))
        .arg(entry_id)
        .arg(entry.record_prefix())
        .arg(bounds.limit)
        .arg(epoch)
        .arg(&entry.id)
        .arg(search_window)
        .arg(bounds.max_bytes);
    match &entry.event {
        None => {
            inv.arg("msg").arg("").arg(entry.user_key());
        }
        Some(event) => {
            let mode = match event.kind {
                EventKind::Edit => "edit",
                EventKind::Delete => "delete",
                EventKind::React => "react",
            };
            inv.arg(mode).arg(&event.target).arg(entry.user_key());
            match event.kind {
                EventKind::Edit => {
                    inv.arg(&entry.message).arg(&entry.timestamp);
                }
                EventKind::React => {
                    inv.arg(event.emoji.as_deref().unwrap_or_default())
                        .arg(event.op.map_or("add", ReactOp::as_str))
                        .arg(bounds.ttl_secs.max(1));
                }
                EventKind::Delete => {}
            }
        }
    }
    pipe.invoke_script(&inv);
}

/// Adds the removal of a batch's acked entries of `room` from the room's
/// record of applied entries: acked, they can no longer be re-processed.
/// Sent after the batch's `XACK`, so an entry never leaves the record
/// while it may still be claimed.
pub(crate) fn add_forget_applied(pipe: &mut redis::Pipeline, room: &RoomId, entry_ids: &[&str]) {
    if !entry_ids.is_empty() {
        pipe.zrem(keys::applied(room), entry_ids).ignore();
    }
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
