//! Which entries a shard task processes, which it acks as garbage, and which
//! it leaves pending for a newer worker.
//!
//! During a rolling upgrade a newer gateway may append entries of an envelope
//! version this worker does not know. Acking them would drop acked messages,
//! so they stay pending (never acked here) until a newer worker holds the
//! shard: workers release their leases when they stop, and the next holder
//! claims every pending entry in id order before it reads anything new.
//!
//! Order decides the rest. A room's later entries must not be processed
//! before its held entry: they would take the lower `seq`s, and the held
//! entry, when the newer worker gets to it, would be persisted after them,
//! out of send order. So a held entry holds its **room** for the
//! rest of the shard task: that room's later entries stay pending behind it
//! (plain entries of this version included), while other rooms of the shard
//! keep flowing. An entry whose room cannot be read holds the whole shard.
//! Claim passes meet held entries again in id order, so a task that starts
//! later (after a takeover) holds the same rooms before it reads new entries.
//!
//! Held entries are claimed when a task (re)connects, not by the periodic
//! claim passes (those take only other consumers' entries, idle for a lease
//! TTL), so a shard that holds many does not read them all again every
//! lease period. `chat_worker_held_entries{shard}` counts them; when no newer
//! worker is coming (a rolled-back upgrade), `chat-fanout-worker release-held
//! --shard <n>` (`release`) drops the newer entries and makes the holder
//! reconnect, which lets its rooms flow again.
//!
//! Held entries stop the stream from being trimmed below them (see
//! `stream`), so a shard with held entries grows until the workers are
//! upgraded, up to the gateways' `STREAM_BACKLOG_MAX`; they are counted by
//! `chat_worker_entries_unknown_version_total` and show in
//! `chat_worker_stream_pending_entries`. Entries that are neither of this
//! version nor of a newer one (garbage) are acked and counted, as before.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chat_shared::envelope::{NewerEntry, StreamEntry, STREAM_FIELD};
use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use redis::streams::StreamId;

/// Shortest interval between two warnings about newly held entries.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What to do with one entry.
#[derive(Debug)]
// Returned and taken apart at once: boxing the large variant would cost an
// allocation per entry for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Verdict {
    /// Process it: a valid entry of this version.
    Process(StreamEntry, RoomId),
    /// Leave it pending for a newer worker; `newer` when the entry itself is
    /// of a newer version (else it waits behind one of its room).
    Hold { newer: bool },
    /// Ack and skip it: it cannot be decoded by any version.
    Drop,
}

/// The rooms (or the whole shard) a shard task holds back.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    /// The shard, for the held-entries gauge.
    shard: u32,
    /// Ids of the entries held, for the gauge.
    held: HashSet<String>,
    rooms: HashSet<String>,
    whole_shard: bool,
    /// Newer entries first read since the last warning.
    unreported: u64,
    last_warning: Option<Instant>,
}

impl Hold {
    /// Nothing held yet, on `shard`. A shard task starts afresh at every
    /// (re)connection: its claim pass meets every held entry again in id
    /// order, so entries released meanwhile (`release-held`) hold nothing.
    pub(crate) fn new(shard: u32) -> Self {
        let hold = Self {
            shard,
            ..Self::default()
        };
        hold.set_gauge();
        hold
    }

    /// Sets the held-entries gauge of the shard to what this task holds.
    fn set_gauge(&self) {
        metrics::gauge!(m::WK_HELD_ENTRIES, "shard" => self.shard.to_string())
            .set(self.held.len() as f64);
    }

    /// Sets the shard's gauge to 0: the task stops holding anything.
    pub(crate) fn clear_gauge(&self) {
        metrics::gauge!(m::WK_HELD_ENTRIES, "shard" => self.shard.to_string()).set(0.0);
    }

    /// Judges one entry, in stream order, and remembers what it holds.
    pub(crate) fn judge(&mut self, e: &StreamId) -> Verdict {
        let verdict = self.verdict(e);
        if matches!(verdict, Verdict::Hold { .. }) {
            self.held.insert(e.id.clone());
        }
        verdict
    }

    fn verdict(&mut self, e: &StreamId) -> Verdict {
        let Some(redis::Value::BulkString(bytes)) = e.map.get(STREAM_FIELD) else {
            return Verdict::Drop;
        };
        match StreamEntry::decode(bytes) {
            Ok(entry) => match RoomId::parse(&entry.room) {
                Ok(_) if self.whole_shard || self.rooms.contains(&entry.room) => {
                    Verdict::Hold { newer: false }
                }
                Ok(room) => Verdict::Process(entry, room),
                Err(_) => Verdict::Drop,
            },
            Err(_) => match NewerEntry::peek(bytes) {
                Some(newer) => {
                    match newer.room.filter(|r| RoomId::parse(r).is_ok()) {
                        Some(room) => {
                            self.rooms.insert(room);
                        }
                        None => self.whole_shard = true,
                    }
                    Verdict::Hold { newer: true }
                }
                None => Verdict::Drop,
            },
        }
    }

    /// Counts `newer` entries of a newer version read for the first time and
    /// warns about them at most once per [`WARN_EVERY`]; `held` is how many
    /// entries of the batch stay pending.
    pub(crate) fn report(&mut self, stream: &str, newer: u64, held: usize) {
        if newer > 0 {
            metrics::counter!(m::WK_UNKNOWN_VERSION).increment(newer);
            self.unreported += newer;
        }
        self.set_gauge();
        if held == 0 {
            return;
        }
        let due = self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY);
        if self.unreported > 0 && due {
            tracing::warn!(
                stream,
                newer = self.unreported,
                rooms_held = self.rooms.len(),
                whole_shard = self.whole_shard,
                "Entries of a newer envelope version left pending for a newer worker, with their rooms' later entries; upgrade the workers"
            );
            self.unreported = 0;
            self.last_warning = Some(Instant::now());
        } else {
            tracing::debug!(stream, held, "Entries left pending for a newer worker");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chat_shared::envelope::{NEWEST_ENTRY_VERSION, VERSION};
    use redis::Value;

    use super::*;

    fn entry(v: u8, room: &str) -> StreamEntry {
        StreamEntry {
            v,
            id: format!("msg-{room}"),
            room: room.into(),
            username: "ana".into(),
            message: "hi".into(),
            timestamp: "2026-11-27T14:00:00.000Z".into(),
            stamped_us: 1,
            user_id: None,
            ..Default::default()
        }
    }

    fn stream_id(field: Option<Value>) -> StreamId {
        StreamId {
            id: "1-0".into(),
            map: field
                .map(|v| HashMap::from([(STREAM_FIELD.to_owned(), v)]))
                .unwrap_or_default(),
            ..StreamId::default()
        }
    }

    fn bytes(e: StreamEntry) -> StreamId {
        stream_id(Some(Value::BulkString(e.encode())))
    }

    fn judge(hold: &mut Hold, e: StreamId) -> &'static str {
        match hold.judge(&e) {
            Verdict::Process(..) => "process",
            Verdict::Hold { newer: true } => "hold newer",
            Verdict::Hold { newer: false } => "hold",
            Verdict::Drop => "drop",
        }
    }

    #[test]
    fn a_newer_entry_holds_its_room_and_garbage_is_dropped() {
        let mut hold = Hold::default();
        assert_eq!(judge(&mut hold, bytes(entry(VERSION, "a"))), "process");
        assert_eq!(
            judge(&mut hold, bytes(entry(NEWEST_ENTRY_VERSION + 1, "a"))),
            "hold newer"
        );
        assert_eq!(judge(&mut hold, bytes(entry(VERSION, "a"))), "hold");
        assert_eq!(judge(&mut hold, bytes(entry(VERSION, "b"))), "process");
        assert_eq!(judge(&mut hold, stream_id(None)), "drop");
        assert_eq!(judge(&mut hold, stream_id(Some(Value::Int(7)))), "drop");
        let junk = Value::BulkString(b"junk".to_vec());
        assert_eq!(judge(&mut hold, stream_id(Some(junk))), "drop");
        assert_eq!(judge(&mut hold, bytes(entry(VERSION, "bad room"))), "drop");
        assert_eq!(judge(&mut hold, bytes(entry(0, "b"))), "drop");
        assert_eq!(judge(&mut hold, bytes(entry(VERSION, "b"))), "process");
    }

    #[test]
    fn a_newer_entry_without_a_readable_room_holds_the_shard() {
        let mut hold = Hold::default();
        assert_eq!(
            judge(
                &mut hold,
                bytes(entry(NEWEST_ENTRY_VERSION + 1, "bad room"))
            ),
            "hold newer"
        );
        assert_eq!(judge(&mut hold, bytes(entry(VERSION, "b"))), "hold");
        let junk = Value::BulkString(b"junk".to_vec());
        assert_eq!(judge(&mut hold, stream_id(Some(junk))), "drop");
    }
}
