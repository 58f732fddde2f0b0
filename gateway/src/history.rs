//! Reading a room's history: the join frame, recovery after `since`, and pages.
//!
//! The list and the room's sequence state are read in one `MULTI` (they share a
//! slot), so `latest_seq` is exactly the newest `seq` the records reflect: a
//! connection that registered before this read receives every later message
//! live, and drops live repeats with `seq <= latest_seq`.

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::protocol::{record_seq, HistoryMeta};
use chat_shared::redis::{RedisError, RedisHandle};

/// A consistent view of a room's history.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Records oldest first, with their `seq`.
    pub records: Vec<(u64, String)>,
    /// Newest `seq` assigned (0 for a room with none).
    pub latest_seq: u64,
    /// The room's epoch, if it has sequence state.
    pub epoch: Option<String>,
}

impl Snapshot {
    /// Smallest `seq` still held.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.records.first().map(|(s, _)| *s)
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

/// Reads the newest `tail` records (all when `None`) plus the sequence state.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn snapshot(
    redis: &RedisHandle,
    room: &RoomId,
    tail: Option<usize>,
) -> Result<Snapshot, RedisError> {
    let start: isize = match tail {
        Some(0) => {
            // Still read the state; an empty range keeps the reply shape.
            -1
        }
        Some(n) => -(n as isize),
        None => 0,
    };
    let mut pipe = redis::pipe();
    pipe.atomic()
        .lrange(keys::messages(room), start, -1)
        .cmd("HMGET")
        .arg(keys::room_state(room))
        .arg("seq")
        .arg("epoch");
    let (raw, (seq, epoch)): (Vec<String>, (Option<u64>, Option<String>)) =
        redis.pipe(&pipe).await?;
    let raw = if tail == Some(0) { Vec::new() } else { raw };
    let records = raw
        .into_iter()
        .filter_map(|r| record_seq(&r).map(|s| (s, r)))
        .collect();
    Ok(Snapshot {
        records,
        latest_seq: seq.unwrap_or(0),
        epoch,
    })
}

/// The newest `limit` records with `seq < before` (all when `before` is `None`),
/// oldest first.
pub fn page(snapshot: &Snapshot, limit: usize, before: Option<u64>) -> Vec<&str> {
    let eligible: Vec<&(u64, String)> = snapshot
        .records
        .iter()
        .filter(|(s, _)| before.is_none_or(|b| *s < b))
        .collect();
    let skip = eligible.len().saturating_sub(limit);
    eligible[skip..].iter().map(|(_, r)| r.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_newest_first_chunks_in_ascending_order() {
        let snap = Snapshot {
            records: (1..=10).map(|s| (s, format!("r{s}"))).collect(),
            latest_seq: 10,
            epoch: None,
        };
        assert_eq!(page(&snap, 3, None), ["r8", "r9", "r10"]);
        assert_eq!(page(&snap, 3, Some(8)), ["r5", "r6", "r7"]);
        assert_eq!(page(&snap, 5, Some(3)), ["r1", "r2"]);
        assert!(page(&snap, 5, Some(1)).is_empty());
    }
}
