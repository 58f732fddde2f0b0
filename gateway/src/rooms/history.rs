//! Reading a room's history: the join frame, recovery after `since`, gap
//! fills and pages.
//!
//! One Lua call (the list and the room's sequence state share a slot) reads
//! the state and only the slice of the list that is asked for: records are
//! contiguous in `seq`, newest at the tail, so the slice is computed from the
//! room's latest `seq` instead of reading the whole list. `latest_seq` is
//! exactly the newest `seq` the records reflect: a connection that registered
//! before this read receives every later message live, and drops live repeats
//! with `seq <= latest_seq`.

use std::sync::LazyLock;

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::protocol::{record_seq, HistoryMeta};
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

/// KEYS: `messages:<room>`, `chat:room:{messages:<room>}`.
/// ARGV: mode (`tail`, `after`, `before`), n (count, `since` or `before_seq`), limit.
/// Returns `{latest_seq, epoch or false, records held, records}`.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local epoch = redis.call('HGET', KEYS[2], 'epoch') or false
local len = redis.call('LLEN', KEYS[1])
local n = tonumber(ARGV[2])
local records = {}
if len > 0 then
  if ARGV[1] == 'tail' then
    if n > 0 then records = redis.call('LRANGE', KEYS[1], -n, -1) end
  elseif ARGV[1] == 'after' then
    if seq > n then records = redis.call('LRANGE', KEYS[1], -(seq - n), -1) end
  else
    local skip = math.max(seq - n + 1, 0)
    if skip < len then
      records = redis.call('LRANGE', KEYS[1], -(skip + tonumber(ARGV[3])), -(skip + 1))
    end
  end
end
return {seq, epoch, len, records}
"#,
    )
});

/// Which part of a room's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The newest `n` records.
    Tail(usize),
    /// Every record with `seq` above this.
    After(u64),
    /// The newest `limit` records with `seq` below `before`.
    Before {
        /// Exclusive upper bound of `seq`.
        before: u64,
        /// Most records returned.
        limit: usize,
    },
}

/// A consistent view of (part of) a room's history.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The records read, oldest first, with their `seq`.
    pub records: Vec<(u64, String)>,
    /// Newest `seq` assigned (0 for a room with none).
    pub latest_seq: u64,
    /// The room's epoch, if it has sequence state.
    pub epoch: Option<String>,
    /// How many records the room's history holds in all.
    pub held: u64,
}

impl Snapshot {
    /// Smallest `seq` still held in the room's history (not just this read).
    pub fn oldest_seq(&self) -> Option<u64> {
        (self.held > 0 && self.latest_seq >= self.held).then(|| self.latest_seq - self.held + 1)
    }

    /// Frame metadata for `room`.
    pub fn meta(&self, room: &RoomId) -> HistoryMeta {
        HistoryMeta {
            room: room.to_string(),
            epoch: self.epoch.clone(),
            oldest_seq: self.oldest_seq(),
            latest_seq: self.latest_seq,
            truncated: false,
            reset: None,
            more: false,
        }
    }
}

/// Reads `range` of the room's history plus its sequence state.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn read(
    redis: &RedisHandle,
    room: &RoomId,
    range: Range,
) -> Result<Snapshot, RedisError> {
    let (mode, n, limit) = match range {
        Range::Tail(n) => ("tail", n as u64, 0),
        Range::After(since) => ("after", since, 0),
        Range::Before { before, limit } => ("before", before, limit),
    };
    let mut inv = READ.key(keys::messages(room));
    inv.key(keys::room_state(room)).arg(mode).arg(n).arg(limit);
    let (seq, epoch, held, raw): (u64, Option<String>, u64, Vec<String>) =
        redis.script(&inv).await?;
    // The slice is computed from contiguity; filtering by the records' own
    // `seq` keeps the answer exact even if the list was altered by hand.
    let records = raw
        .into_iter()
        .filter_map(|r| record_seq(&r).map(|s| (s, r)))
        .filter(|(s, _)| match range {
            Range::Tail(_) => true,
            Range::After(since) => *s > since,
            Range::Before { before, .. } => *s < before,
        })
        .collect();
    Ok(Snapshot {
        records,
        latest_seq: seq,
        epoch,
        held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_seq_comes_from_what_the_room_holds() {
        let snap = Snapshot {
            records: vec![(11, "r".into())],
            latest_seq: 12,
            epoch: None,
            held: 5,
        };
        assert_eq!(snap.oldest_seq(), Some(8));
        assert_eq!(Snapshot::default().oldest_seq(), None);
    }
}
