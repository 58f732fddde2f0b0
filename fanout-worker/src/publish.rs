//! Routing persisted messages to the gateways that own connections in their rooms.
//!
//! For each room of a batch the worker reads `chat:room-gateways:{connections:<room>}`
//! (gateway → open connections) once, so the cost per message does not grow with
//! the number of connections, then sends each gateway one [`DeliveryBatch`]
//! holding only the messages of its rooms, in stream order.

use std::collections::HashMap;

use chat_shared::envelope::{now_us, Delivery, DeliveryBatch};
use chat_shared::ids::RoomId;
use chat_shared::keys;

/// Per-gateway delivery batches built from one processed stream batch.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    batches: HashMap<String, Vec<Delivery>>,
}

impl Routing {
    /// Adds `delivery` for every gateway in `gateways`.
    pub(crate) fn route(&mut self, delivery: &Delivery, gateways: &[String]) {
        for gw in gateways {
            self.batches
                .entry(gw.clone())
                .or_default()
                .push(delivery.clone());
        }
    }

    /// Adds a publish per gateway to `pipe` with `command` (`PUBLISH`, or
    /// sharded `SPUBLISH` on a cluster); returns how many were added.
    pub(crate) fn add_publishes(self, pipe: &mut redis::Pipeline, command: &str) -> usize {
        let n = self.batches.len();
        let published_us = now_us();
        for (gateway, deliveries) in self.batches {
            let batch = DeliveryBatch::new(deliveries, published_us);
            pipe.cmd(command)
                .arg(keys::gateway_channel(&gateway))
                .arg(batch.encode())
                .ignore();
        }
        n
    }
}

#[cfg(test)]
impl Routing {
    /// The deliveries queued for `gateway`, in order.
    pub(crate) fn deliveries(&self, gateway: &str) -> &[Delivery] {
        self.batches.get(gateway).map_or(&[], Vec::as_slice)
    }
}

/// Adds one `HKEYS` per room to `pipe`, in the order of `rooms`.
pub(crate) fn add_gateway_lookups(pipe: &mut redis::Pipeline, rooms: &[RoomId]) {
    for room in rooms {
        pipe.cmd("HKEYS").arg(keys::room_gateways(room));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gateway_gets_only_its_rooms_in_order() {
        let d = |room: &str, seq| Delivery {
            room: room.into(),
            seq,
            epoch: String::new(),
            record: String::new(),
            stamped_us: 0,
        };
        let mut r = Routing::default();
        r.route(&d("a", 1), &["g1".into(), "g2".into()]);
        r.route(&d("b", 1), &["g2".into()]);
        r.route(&d("a", 2), &["g1".into(), "g2".into()]);
        assert_eq!(
            r.batches["g1"]
                .iter()
                .map(|d| (d.room.as_str(), d.seq))
                .collect::<Vec<_>>(),
            [("a", 1), ("a", 2)]
        );
        assert_eq!(r.batches["g2"].len(), 3);
        let mut pipe = redis::pipe();
        assert_eq!(r.add_publishes(&mut pipe, "PUBLISH"), 2);
    }
}
