//! Stage 1 of a batch: decode each entry's envelope and validate its room;
//! undecodable entries are acked and skipped, newer ones held.

use chat_shared::envelope::StreamEntry;
use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use redis::streams::StreamId;

use super::Origin;
use crate::hold::{Hold, Verdict};

/// One decoded entry of a batch.
#[derive(Debug)]
pub(super) struct Item {
    /// Stream id of the entry.
    pub(super) entry_id: String,
    pub(super) entry: StreamEntry,
    /// `entry.room`, validated.
    pub(super) room: RoomId,
}

/// A batch after decoding.
#[derive(Debug)]
pub(super) struct Decoded {
    /// The ids to ack, in stream order: the decodable entries and the
    /// undecodable ones, not the held ones.
    pub(super) ids: Vec<String>,
    /// The decodable entries, in stream order.
    pub(super) items: Vec<Item>,
}

/// Stage 1: decodes each entry's envelope and validates its room. An entry
/// that fails (a foreign or corrupt record) is counted, logged and skipped,
/// but still acked with the batch so it cannot block the shard. An entry of
/// a newer envelope version, and later entries of its room, are held: left
/// pending, not acked (`hold`).
pub(super) fn decode(
    stream: &str,
    entries: Vec<StreamId>,
    hold: &mut Hold,
    origin: Origin,
) -> Decoded {
    let mut ids = Vec::with_capacity(entries.len());
    let mut items = Vec::with_capacity(entries.len());
    let (mut held, mut newer) = (0, 0);
    for e in entries {
        match hold.judge(&e) {
            Verdict::Process(entry, room) => {
                ids.push(e.id.clone());
                items.push(Item {
                    entry_id: e.id,
                    entry,
                    room,
                });
            }
            Verdict::Hold { newer: is_newer } => {
                held += 1;
                newer += u64::from(is_newer && origin == Origin::New);
            }
            Verdict::Drop => {
                metrics::counter!(m::WK_UNDECODABLE).increment(1);
                tracing::warn!(stream, entry = %e.id, "Undecodable stream entry; acking and skipping it");
                ids.push(e.id);
            }
        }
    }
    hold.report(stream, newer, held);
    Decoded { ids, items }
}
