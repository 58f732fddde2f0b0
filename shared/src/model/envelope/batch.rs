//! What a worker (or a gateway, for ephemeral events and probes) publishes
//! to a gateway's delivery channel: a [`DeliveryBatch`] of [`Delivery`]s,
//! [`EphemeralEvent`]s and [`BanNotice`]s.

use serde::{Deserialize, Serialize};

use super::{DecodeError, VERSION};

/// One message ready for delivery to a gateway's local connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Room the message belongs to.
    pub room: String,
    /// Its per-room sequence number.
    pub seq: u64,
    /// The room's sequence epoch: `seq` only compares within one epoch.
    pub epoch: String,
    /// The stored JSON record, embedded verbatim in the `message` frame.
    pub record: String,
    /// Gateway stamp in Unix microseconds (latency metrics).
    pub stamped_us: i64,
}

/// What a worker publishes to one gateway's channel per processed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryBatch {
    /// Envelope version ([`VERSION`]).
    pub v: u8,
    /// Deliveries in stream order (so in `seq` order per room).
    pub deliveries: Vec<Delivery>,
    /// Worker publish time in Unix microseconds (latency metrics).
    pub published_us: i64,
    /// Set on a gateway's liveness probe to itself (no deliveries then): the
    /// probe's send time in Unix microseconds.
    #[serde(default)]
    pub probe: Option<i64>,
    /// Ephemeral room events (join, leave, typing, read): outside the
    /// rooms' `seq` sequence, never stored (made and published by [`crate::ephemeral`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EphemeralEvent>,
    /// Users banned from rooms: the gateway closes their connections there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bans: Vec<BanNotice>,
}

/// A ban to enforce on a gateway's open connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanNotice {
    /// The room.
    pub room: String,
    /// The banned user key (user id, or display name without authentication).
    pub user: String,
}

impl DeliveryBatch {
    /// A batch of `deliveries` published at `published_us`, with no probe,
    /// events or bans.
    pub fn new(deliveries: Vec<Delivery>, published_us: i64) -> Self {
        Self {
            v: VERSION,
            deliveries,
            published_us,
            probe: None,
            events: Vec::new(),
            bans: Vec::new(),
        }
    }

    /// A liveness probe a gateway publishes to its own channel.
    pub fn probe(now_us: i64) -> Self {
        Self {
            probe: Some(now_us),
            ..Self::new(Vec::new(), now_us)
        }
    }

    /// Encodes as MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Decodes a batch received on a gateway channel.
    ///
    /// # Errors
    /// Fails on bytes that are not a version-1 batch.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let b: Self = rmp_serde::from_slice(bytes).map_err(|_| DecodeError)?;
        if b.v != VERSION {
            return Err(DecodeError);
        }
        Ok(b)
    }
}

/// One ephemeral frame for the local members of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EphemeralEvent {
    /// The room whose members get it.
    pub room: String,
    /// The complete client frame, serialized once by the producer.
    pub frame: String,
    /// The connection (`<gateway>/<conn>`) that must not get it: the sender
    /// of a `typing`.
    #[serde(default)]
    pub except_conn: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip() {
        let b = DeliveryBatch {
            v: VERSION,
            deliveries: vec![Delivery {
                room: "r".into(),
                seq: 1,
                epoch: "e".into(),
                record: "{}".into(),
                stamped_us: 5,
            }],
            published_us: 6,
            probe: None,
            events: Vec::new(),
            bans: vec![BanNotice {
                room: "r".into(),
                user: "u".into(),
            }],
        };
        assert_eq!(DeliveryBatch::decode(&b.encode()).unwrap(), b);
    }
}
