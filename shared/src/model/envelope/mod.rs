//! Internal records exchanged through Redis, encoded as MessagePack.
//!
//! They never reach clients: gateways append [`StreamEntry`] to a shard stream;
//! workers publish [`DeliveryBatch`] to a gateway's channel. A version byte lets
//! a rolling upgrade tell old records from new ones.

mod batch;
mod entry;

pub use batch::{BanNotice, Delivery, DeliveryBatch, EphemeralEvent};
pub use entry::{EventKind, NewerEntry, RoomEvent, StreamEntry};

/// Envelope version of delivery batches and of plain message entries.
pub const VERSION: u8 = 1;

/// Version of stream entries that use a room-events field (`reply_to`,
/// `attachments`, `event`): a worker that only knows [`VERSION`] holds them
/// for a newer worker instead of storing them without those fields. Plain
/// messages keep [`VERSION`], so older workers still process them.
pub const ROOM_EVENTS_VERSION: u8 = 2;

/// The newest stream entry version this build reads.
pub const NEWEST_ENTRY_VERSION: u8 = ROOM_EVENTS_VERSION;

/// Field name of the envelope inside a stream entry.
pub const STREAM_FIELD: &str = "e";

/// Bytes that are not a valid envelope of this version.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("undecodable envelope")]
pub struct DecodeError;

/// Current time in Unix microseconds.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
