//! The local fan-out registry: which connections of this gateway are in which room.
//!
//! The subscriber hands each delivery batch here. A message frame is built once
//! per gateway into shared bytes (its `/sse` event too, once, by the first
//! `/sse` member to write it) and offered with `try_send` to each member's
//! bounded queue; a full queue means "slow consumer", decided here and only
//! here: the member is kicked (its connection closes with 1013) and removed.
//! Ephemeral frames (join, leave, typing, read) are best-effort instead: a
//! full queue drops the frame, never the connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use chat_shared::envelope::{now_us, DeliveryBatch};
use chat_shared::ephemeral::EphemeralEvent;
use chat_shared::metrics as m;
use chat_shared::presence::PresenceUser;
use chat_shared::protocol::live_frame;
use tokio_util::sync::CancellationToken;

use crate::delivery::queue;

/// What a connection's writer is given, in one bounded queue: live messages
/// and resyncs from this registry, replies from the connection's own reader.
/// One queue per connection (not two) keeps an idle connection small, and a
/// full queue means "slow consumer" whatever filled it.
///
/// Kept to one pointer and a tag (16 bytes): it is a queue slot, and a
/// queue of slots is per connection (with tokio's channel, whose first
/// block of 32 slots is allocated up front, a 64-byte inline message made
/// that block alone 2 KiB per connection).
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A live chat message, shared by every recipient.
    Message(Arc<LiveMessage>),
    /// Deliveries may have been missed (the subscription was re-established):
    /// catch up from history.
    Resync,
    /// A reply of the connection's reader (ack, error, history page); boxed
    /// to keep the queue's slots small.
    Reply(Box<Utf8Bytes>),
    /// The reader has ended: everything it queued is ahead of this.
    ReaderDone,
    /// An ephemeral frame (join, leave, typing, read), written as-is: it
    /// has no `seq` and bypasses the cursor. Built once per event and
    /// shared by every member (one allocation per event, not per member).
    Ephemeral(Arc<Utf8Bytes>),
    /// The connection's user was banned from the room: close with 4003.
    Banned,
}

/// A live message, serialized once and shared (behind one `Arc`) by every
/// recipient.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    /// The message's `seq`, used to drop repeats and detect gaps.
    pub seq: u64,
    /// The room's epoch the `seq` belongs to.
    pub epoch: Arc<str>,
    /// The serialized `message` frame, shared by every recipient.
    pub frame: Utf8Bytes,
    /// The frame as a server-sent event, built by the first `/sse`
    /// recipient to write it and shared by the others (empty in a room
    /// without one).
    sse: OnceLock<Bytes>,
}

impl LiveMessage {
    /// A live message of `frame`, at `seq` of `epoch`.
    pub fn new(seq: u64, epoch: Arc<str>, frame: Utf8Bytes) -> Self {
        Self {
            seq,
            epoch,
            frame,
            sse: OnceLock::new(),
        }
    }

    /// The frame's encoding for `/sse`: `encode` runs once per message, and
    /// every recipient gets the same bytes.
    pub fn sse_event(&self, encode: impl FnOnce(&str) -> Bytes) -> Bytes {
        self.sse.get_or_init(|| encode(self.frame.as_str())).clone()
    }
}

/// What the registry holds per connection.
#[derive(Debug)]
struct Member {
    tx: queue::Sender<Outbound>,
    /// The connection's user: its key (user id, else display name) finds a
    /// banned user's connections; all of it re-registers its presence.
    user: PresenceUser,
    kick: CancellationToken,
    /// Set together with `kick`; a plain atomic because it is read for every
    /// delivery, and the token's own check takes a lock.
    kicked: AtomicBool,
}

impl Member {
    fn kick(&self) {
        self.kicked.store(true, Ordering::Relaxed);
        self.kick.cancel();
    }
}

/// Rooms → connections of this gateway.
#[derive(Debug, Default)]
pub struct LocalRooms {
    rooms: RwLock<HashMap<String, HashMap<u64, Member>>>,
}

impl LocalRooms {
    /// Adds a connection; returns a guard that removes it on drop.
    #[must_use = "the membership ends when the guard is dropped"]
    pub fn join(
        self: &Arc<Self>,
        room: &str,
        conn: u64,
        user: PresenceUser,
        tx: queue::Sender<Outbound>,
        kick: CancellationToken,
    ) -> Membership {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        rooms.entry(room.to_owned()).or_default().insert(
            conn,
            Member {
                tx,
                user,
                kick,
                kicked: AtomicBool::new(false),
            },
        );
        Membership {
            rooms: Arc::clone(self),
            room: room.to_owned(),
            conn,
        }
    }

    fn leave(&self, room: &str, conn: u64) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&conn);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Asks every local connection to catch up from history, after the
    /// delivery subscription was re-established. A full queue kicks the
    /// member, as for a message.
    pub fn resync_all(&self) {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        for member in rooms.values().flat_map(|m| m.values()) {
            if let Err(queue::error::TrySendError::Full(_)) = member.tx.try_send(Outbound::Resync) {
                metrics::counter!(m::GW_SLOW_CONSUMERS).increment(1);
                member.kick();
            }
        }
    }

    /// Asks the local connections of `room` to catch up from history (the
    /// room's deliveries were missed). A full queue kicks the member.
    pub fn resync_room(&self, room: &str) {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        for member in rooms.get(room).into_iter().flat_map(|m| m.values()) {
            if let Err(queue::error::TrySendError::Full(_)) = member.tx.try_send(Outbound::Resync) {
                metrics::counter!(m::GW_SLOW_CONSUMERS).increment(1);
                member.kick();
            }
        }
    }

    /// Ids of the local connections in `room` now.
    pub fn conn_ids(&self, room: &str) -> Vec<u64> {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms
            .get(room)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Closes `user`'s connections in `room` with 4003 `banned` (a member
    /// whose queue is full is kicked instead). Returns how many.
    pub fn ban(&self, room: &str, user: &str) -> usize {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let Some(members) = rooms.get(room) else {
            return 0;
        };
        let mut closed = 0;
        for member in members.values().filter(|m| m.user.key == user) {
            closed += 1;
            if let Err(queue::error::TrySendError::Full(_)) = member.tx.try_send(Outbound::Banned) {
                member.kick();
            }
        }
        closed
    }

    /// Every room with the ids and users of its local connections, for
    /// re-registering them in Redis after Redis lost them.
    pub fn members(&self) -> Vec<(String, Vec<(u64, PresenceUser)>)> {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms
            .iter()
            .map(|(r, m)| {
                let conns = m.iter().map(|(id, m)| (*id, m.user.clone())).collect();
                (r.clone(), conns)
            })
            .collect()
    }

    /// Names of the rooms with at least one local connection.
    pub fn room_names(&self) -> Vec<String> {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        rooms.keys().cloned().collect()
    }

    /// Number of rooms with at least one local connection.
    pub fn room_count(&self) -> usize {
        self.rooms.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Offers every delivery of `batch` to the local members of its room.
    /// Returns the number of frames queued.
    pub fn deliver(&self, batch: &DeliveryBatch) -> usize {
        for ban in &batch.bans {
            let closed = self.ban(&ban.room, &ban.user);
            tracing::info!(room = ban.room, user = ban.user, closed, "Ban enforced");
        }
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let now = now_us();
        let mut queued = 0;
        let mut slow = 0;
        for d in &batch.deliveries {
            let Some(members) = rooms.get(&d.room) else {
                continue;
            };
            let Some(frame) = live_frame(&d.record) else {
                tracing::warn!(seq = d.seq, "Delivered record is not JSON; skipped");
                continue;
            };
            let live = Arc::new(LiveMessage::new(
                d.seq,
                Arc::from(d.epoch.as_str()),
                Utf8Bytes::from(frame),
            ));
            for member in members.values() {
                if member.kicked.load(Ordering::Relaxed) {
                    continue;
                }
                match member.tx.try_send(Outbound::Message(live.clone())) {
                    Ok(()) => queued += 1,
                    Err(queue::error::TrySendError::Full(_)) => {
                        slow += 1;
                        member.kick();
                    }
                    Err(queue::error::TrySendError::Closed(_)) => {}
                }
            }
            metrics::histogram!(m::GW_DELIVERY_LATENCY_SECONDS)
                .record((now - d.stamped_us).max(0) as f64 / 1e6);
        }
        metrics::counter!(m::GW_MESSAGES_DELIVERED).increment(queued as u64);
        if slow > 0 {
            metrics::counter!(m::GW_SLOW_CONSUMERS).increment(slow);
        }
        queued
    }
}

impl LocalRooms {
    /// Offers ephemeral `events` to the local members of their rooms, except
    /// the connection each one names (resolved by `local_conn`). A full queue
    /// drops the frame (counted), never the member. Returns the number of
    /// frames queued.
    pub fn deliver_events(
        &self,
        events: &[EphemeralEvent],
        local_conn: impl Fn(&str) -> Option<u64>,
    ) -> usize {
        if events.is_empty() {
            return 0;
        }
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        let (mut queued, mut dropped) = (0u64, 0u64);
        for ev in events {
            let Some(members) = rooms.get(&ev.room) else {
                continue;
            };
            let except = ev.except_conn.as_deref().and_then(&local_conn);
            let frame = Arc::new(Utf8Bytes::from(ev.frame.as_str()));
            for (id, member) in members {
                if Some(*id) == except || member.kicked.load(Ordering::Relaxed) {
                    continue;
                }
                match member.tx.try_send(Outbound::Ephemeral(Arc::clone(&frame))) {
                    Ok(()) => queued += 1,
                    Err(queue::error::TrySendError::Full(_)) => dropped += 1,
                    Err(queue::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        metrics::counter!(m::GW_EPHEMERAL_DELIVERED).increment(queued);
        if dropped > 0 {
            metrics::counter!(m::GW_EPHEMERAL_DROPPED).increment(dropped);
        }
        queued as usize
    }
}

/// Removes a connection from [`LocalRooms`] when dropped.
#[derive(Debug)]
pub struct Membership {
    rooms: Arc<LocalRooms>,
    room: String,
    conn: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.rooms.leave(&self.room, self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_shared::envelope::{Delivery, VERSION};

    fn user() -> PresenceUser {
        PresenceUser::new("ana", None)
    }

    #[test]
    fn ephemeral_frames_skip_the_sender_and_drop_on_full_queues() {
        let rooms = Arc::new(LocalRooms::default());
        let (tx_a, mut rx_a) = queue::channel(8);
        let (tx_b, mut rx_b) = queue::channel(1);
        let kick_b = CancellationToken::new();
        let _a = rooms.join("r", 1, user(), tx_a, CancellationToken::new());
        let _b = rooms.join("r", 2, user(), tx_b, kick_b.clone());
        let ev = |except: Option<&str>| EphemeralEvent {
            room: "r".into(),
            frame: "{\"type\":\"typing\"}".into(),
            except_conn: except.map(str::to_owned),
        };
        let resolve = |m: &str| (m == "me").then_some(1);
        assert_eq!(rooms.deliver_events(&[ev(Some("me"))], resolve), 1);
        assert!(rx_a.try_recv().is_err(), "the sender is skipped");
        assert!(matches!(rx_b.try_recv().unwrap(), Outbound::Ephemeral(_)));
        // b's queue (1 slot) fills; the next frame is dropped, b stays.
        assert_eq!(rooms.deliver_events(&[ev(None), ev(None)], resolve), 3);
        assert!(!kick_b.is_cancelled(), "ephemeral frames never kick");
        assert_eq!(rooms.members()[0].1.len(), 2);
    }

    fn batch(room: &str, seqs: &[u64]) -> DeliveryBatch {
        DeliveryBatch {
            v: VERSION,
            deliveries: seqs
                .iter()
                .map(|&seq| Delivery {
                    room: room.into(),
                    seq,
                    epoch: "e".into(),
                    record: format!("{{\"seq\":{seq}}}"),
                    stamped_us: 0,
                })
                .collect(),
            published_us: 0,
            probe: None,
            events: Vec::new(),
            bans: Vec::new(),
        }
    }

    #[test]
    fn delivers_to_room_members_only_and_kicks_full_queues() {
        let rooms = Arc::new(LocalRooms::default());
        let (tx_a, mut rx_a) = queue::channel(8);
        let (tx_b, _rx_b) = queue::channel(1);
        let (tx_c, mut rx_c) = queue::channel(8);
        let kick_b = CancellationToken::new();
        let _a = rooms.join("r", 1, "a".into(), tx_a, CancellationToken::new());
        let _b = rooms.join("r", 2, "b".into(), tx_b, kick_b.clone());
        let _c = rooms.join("other", 3, "b".into(), tx_c, CancellationToken::new());
        assert_eq!(rooms.deliver(&batch("r", &[1, 2])), 3);
        let seq = |o: Outbound| match o {
            Outbound::Message(m) => m.seq,
            _ => 0,
        };
        assert_eq!(seq(rx_a.try_recv().unwrap()), 1);
        assert_eq!(seq(rx_a.try_recv().unwrap()), 2);
        assert!(rx_c.try_recv().is_err());
        assert!(kick_b.is_cancelled(), "member with a full queue is kicked");
        assert_eq!(rooms.room_count(), 2);
        rooms.resync_all();
        assert!(matches!(rx_c.try_recv().unwrap(), Outbound::Resync));
    }

    /// A queue slot per queued message, in every connection's queue.
    #[test]
    fn a_queue_slot_is_two_words() {
        assert!(std::mem::size_of::<Outbound>() <= 16);
    }

    #[test]
    fn a_ban_reaches_only_that_users_connections_in_that_room() {
        let rooms = Arc::new(LocalRooms::default());
        let (tx_a, mut rx_a) = queue::channel(8);
        let (tx_b, mut rx_b) = queue::channel(8);
        let (tx_full, _rx_full) = queue::channel(1);
        let kick_full = CancellationToken::new();
        let _a = rooms.join("r", 1, "ana".into(), tx_a, CancellationToken::new());
        let _b = rooms.join("r", 2, "bo".into(), tx_b, CancellationToken::new());
        tx_full.try_send(Outbound::Resync).unwrap();
        let _f = rooms.join("r", 3, "ana".into(), tx_full, kick_full.clone());
        assert_eq!(rooms.ban("r", "ana"), 2);
        assert!(matches!(rx_a.try_recv().unwrap(), Outbound::Banned));
        assert!(rx_b.try_recv().is_err());
        assert!(kick_full.is_cancelled(), "a full queue is closed anyway");
        assert_eq!(rooms.ban("other", "ana"), 0);
    }

    #[test]
    fn guard_removes_membership() {
        let rooms = Arc::new(LocalRooms::default());
        let (tx, _rx) = queue::channel(1);
        {
            let _m = rooms.join("r", 1, "a".into(), tx, CancellationToken::new());
            assert_eq!(rooms.room_count(), 1);
        }
        assert_eq!(rooms.room_count(), 0);
    }
}
