//! What a connection reads from history: the join (or `since` recovery)
//! frame, gap fills and resets.
//!
//! The history source is a trait so the writer's recovery logic can be
//! unit-tested with a source that fails on cue; [`RoomHistory`] is the real
//! one, reading Redis through [`crate::rooms::history`].

use std::future::Future;
use std::time::Duration;

use chat_shared::ids::RoomId;
use chat_shared::protocol::{history_frames, HISTORY_FRAME_BYTES};
use chat_shared::redis::RedisError;

use super::cursor::Cursor;
use super::Resume;
use crate::rooms::history::{self, Range, Snapshot};
use crate::state::AppState;

/// Attempts at a history read that a live connection depends on (a gap fill
/// or a reset) before the connection is closed with 1011.
pub(super) const READ_ATTEMPTS: u32 = 3;

/// Pause before the second attempt; doubled before each further one.
pub(super) const READ_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where a connection reads its room's history from.
pub(super) trait HistorySource: Send + Sync {
    /// Reads `range` of the room's history plus its sequence state.
    fn read(&self, range: Range) -> impl Future<Output = Result<Snapshot, RedisError>> + Send;
}

/// One room's history in Redis, read through the gateway's shared state (a
/// pointer: every connection holds one, and a Redis handle by value would
/// cost each of them several hundred bytes).
#[derive(Debug, Clone)]
pub(super) struct RoomHistory {
    /// The gateway's state: its Redis handle and the read permits that bound
    /// concurrent history reads.
    pub(super) state: AppState,
    /// The room read.
    pub(super) room: RoomId,
}

impl HistorySource for RoomHistory {
    async fn read(&self, range: Range) -> Result<Snapshot, RedisError> {
        // Closed only if the gateway is gone; read anyway then.
        let _permit = self.state.catch_up_permits.acquire().await.ok();
        history::read(&self.state.redis, &self.room, range).await
    }
}

/// Reads `range`, retrying a failed read with a doubling pause.
///
/// # Errors
/// The last error when every attempt failed.
pub(super) async fn read_with_retry<H: HistorySource>(
    history: &H,
    range: Range,
) -> Result<Snapshot, RedisError> {
    let mut pause = READ_RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        match history.read(range).await {
            Ok(snap) => return Ok(snap),
            Err(e) if attempt >= READ_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, attempt, "History read failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

/// The join (or recovery) frames and the cursor they leave the client at.
#[derive(Debug)]
pub(super) struct Joined {
    /// History frames to send first (none when history on join is off).
    pub(super) frames: Vec<String>,
    /// The client's position once it has those frames.
    pub(super) cursor: Cursor,
}

/// Reads what a joining client gets: the newest `on_join` messages, or with
/// `since` everything after it that history still holds.
///
/// # Errors
/// Fails when Redis does not answer.
pub(super) async fn join<H: HistorySource>(
    history: &H,
    room: &RoomId,
    resume: Option<&Resume>,
    on_join: usize,
) -> Result<Joined, RedisError> {
    let tail = Range::Tail(on_join);
    let first = match resume {
        None => tail,
        Some(r) => Range::After(r.since),
    };
    let mut snap = history.read(first).await?;
    // Decided on the first read: messages arriving before the second read
    // must not turn a reset back into a (gapped) recovery.
    let forced = resume.and_then(|r| reset_reason(r, &snap));
    if forced.is_some() {
        // The client's position is void: it gets a fresh join's history.
        snap = history.read(tail).await?;
    }
    let frames = join_frame(&snap, room, resume, forced, on_join).unwrap_or_default();
    Ok(Joined {
        frames,
        cursor: Cursor::new(snap.latest_seq, snap.epoch),
    })
}

/// Why a client's `since` (and `epoch`) cannot be honoured, if it cannot.
pub(super) fn reset_reason(resume: &Resume, snap: &Snapshot) -> Option<&'static str> {
    let epoch_changed = matches!((&resume.epoch, &snap.epoch), (Some(theirs), Some(ours)) if theirs != ours)
        || (resume.epoch.is_some() && snap.epoch.is_none() && resume.since > 0);
    if epoch_changed {
        Some("epoch_changed")
    } else if resume.since > snap.latest_seq {
        Some("since_ahead")
    } else {
        None
    }
}

/// The history frames sent on join, or `None` when history on join is
/// disabled and the client is not recovering.
pub(super) fn join_frame(
    snap: &Snapshot,
    room: &RoomId,
    resume: Option<&Resume>,
    forced: Option<&'static str>,
    on_join: usize,
) -> Option<Vec<String>> {
    let mut meta = snap.meta(room);
    let Some(resume) = resume else {
        if on_join == 0 {
            return None;
        }
        return Some(history_frames(
            &meta,
            snap.records.iter().map(|(_, r)| r.as_str()),
            HISTORY_FRAME_BYTES,
        ));
    };
    if let Some(reason) = forced.or_else(|| reset_reason(resume, snap)) {
        // The client's position belongs to a sequence that no longer exists:
        // tell it, and give it the recent history of the new one.
        meta.reset = Some(reason);
        let skip = snap.records.len().saturating_sub(on_join);
        return Some(history_frames(
            &meta,
            snap.records[skip..].iter().map(|(_, r)| r.as_str()),
            HISTORY_FRAME_BYTES,
        ));
    }
    let wanted = snap.records.iter().filter(|(s, _)| *s > resume.since);
    meta.truncated = gap_trimmed(snap, resume.since);
    Some(history_frames(
        &meta,
        wanted.map(|(_, r)| r.as_str()),
        HISTORY_FRAME_BYTES,
    ))
}

/// Whether the messages after `from` reach below what `snap`'s history
/// still holds (some were trimmed), the same rule `since` recovery uses for
/// `truncated`.
pub(super) fn gap_trimmed(snap: &Snapshot, from: u64) -> bool {
    snap.oldest_seq().is_some_and(|o| o > from + 1) || (snap.held == 0 && snap.latest_seq > from)
}

/// The `history` frames (`truncated: true`) that give a live connection what
/// is left after a trimmed gap.
pub(super) fn truncated_frames<'a>(
    snap: &Snapshot,
    room: &RoomId,
    records: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut meta = snap.meta(room);
    meta.truncated = true;
    history_frames(&meta, records, HISTORY_FRAME_BYTES)
}

/// The `history` frames of a reset (`reset: "epoch_changed"`): the new
/// sequence's recent messages.
pub(super) fn reset_frames(snap: &Snapshot, room: &RoomId) -> Vec<String> {
    let mut meta = snap.meta(room);
    meta.reset = Some("epoch_changed");
    history_frames(
        &meta,
        snap.records.iter().map(|(_, r)| r.as_str()),
        HISTORY_FRAME_BYTES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(range: std::ops::RangeInclusive<u64>, epoch: &str) -> Snapshot {
        Snapshot {
            records: range
                .clone()
                .map(|s| (s, format!("{{\"seq\":{s}}}")))
                .collect(),
            latest_seq: *range.end(),
            epoch: Some(epoch.into()),
            held: range.end() - range.start() + 1,
        }
    }

    fn join_frame_one(
        snap: &Snapshot,
        room: &RoomId,
        resume: Option<&Resume>,
        on_join: usize,
    ) -> Option<String> {
        join_frame(snap, room, resume, None, on_join).map(|f| {
            assert_eq!(f.len(), 1);
            f.into_iter().next().unwrap()
        })
    }

    fn seqs(frame: &str) -> (Vec<u64>, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        let s = v["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        (s, v["data"].clone())
    }

    #[test]
    fn recovery_sends_exactly_what_follows_since() {
        let room = RoomId::parse("r").unwrap();
        let r = Resume {
            since: 7,
            epoch: Some("e1".into()),
        };
        let (s, d) = seqs(&join_frame_one(&snap(5..=10, "e1"), &room, Some(&r), 2).unwrap());
        assert_eq!(s, [8, 9, 10]);
        assert!(d.get("truncated").is_none());
        let r = Resume {
            since: 2,
            epoch: None,
        };
        let (s, d) = seqs(&join_frame_one(&snap(5..=10, "e1"), &room, Some(&r), 2).unwrap());
        assert_eq!(s, [5, 6, 7, 8, 9, 10]);
        assert_eq!(d["truncated"], true);
    }

    #[test]
    fn stale_epoch_is_reported() {
        let room = RoomId::parse("r").unwrap();
        let r = Resume {
            since: 7,
            epoch: Some("old".into()),
        };
        let (s, d) = seqs(&join_frame_one(&snap(1..=3, "new"), &room, Some(&r), 2).unwrap());
        assert_eq!(d["reset"], "epoch_changed");
        assert_eq!(s, [2, 3]);
        let r = Resume {
            since: 70,
            epoch: None,
        };
        let (_, d) = seqs(&join_frame_one(&snap(1..=3, "new"), &room, Some(&r), 2).unwrap());
        assert_eq!(d["reset"], "since_ahead");
    }

    #[test]
    fn a_reset_decided_on_the_first_read_stands() {
        // The first read found `since` ahead; by the second, the room caught up.
        let room = RoomId::parse("r").unwrap();
        let r = Resume {
            since: 7,
            epoch: Some("e".into()),
        };
        let frames =
            join_frame(&snap(5..=10, "e"), &room, Some(&r), Some("since_ahead"), 50).unwrap();
        let (s, d) = seqs(&frames[0]);
        assert_eq!(d["reset"], "since_ahead");
        assert_eq!(
            s,
            [5, 6, 7, 8, 9, 10],
            "the whole tail, not just what follows since"
        );
    }

    #[test]
    fn plain_join_sends_tail_or_nothing() {
        let room = RoomId::parse("r").unwrap();
        let (s, _) = seqs(&join_frame_one(&snap(1..=3, "e"), &room, None, 50).unwrap());
        assert_eq!(s, [1, 2, 3]);
        assert!(join_frame(&snap(1..=3, "e"), &room, None, None, 0).is_none());
    }
}
