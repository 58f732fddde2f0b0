//! Every Redis key, channel and group name, in one place.
//!
//! The spec's keys keep their exact names: `messages:<room>`, `connections:<room>`
//! and `rooms:active`. Our own per-room keys embed the spec key as a cluster
//! hash tag (`chat:room:{messages:<room>}`), so they share a slot with it and the
//! worker's persistence script can touch the history list and the sequence
//! state in one atomic call on Redis Cluster too. Room ids cannot contain braces
//! (see [`RoomId`]), so no room can inject a hash tag.
//!
//! | key | type | owner |
//! |---|---|---|
//! | `messages:<room>` | list | worker (history, oldest first) |
//! | `chat:room:{messages:<room>}` | hash `seq`, `last_entry`, `epoch` | worker |
//! | `chat:msg-index:{messages:<room>}` | hash message id → `<seq>:<author>` (`:<author>` until persisted) | gateway writes, worker completes and trims |
//! | `chat:reactions:{messages:<room>}` | hash message id → JSON `{emoji: {user: 1}}` | worker |
//! | `connections:<room>` | set of `<gateway>/<conn>` | gateway |
//! | `chat:ban:{connections:<room>}:<user>` | string (who banned), TTL = the ban | gateway (HTTP bans API) |
//! | `chat:room-gateways:{connections:<room>}` | hash gateway → open connections | gateway |
//! | `chat:presence-conns:{connections:<room>}` | hash `<gateway>/<conn>` → user JSON | gateway, janitor |
//! | `chat:presence-users:{connections:<room>}` | hash user key → open connections | gateway, janitor |
//! | `chat:reads:{messages:<room>}` | hash user key → last-read `seq`, expires with the room state | gateway |
//! | `rooms:active` | set | gateway adds, worker adds, janitor removes |
//! | `chat:stream:{shard-<n>}` (cluster: `{shard-<n>-<k>}`, see [`crate::redis::cluster`]) | stream of [`crate::model::envelope::StreamEntry`] | gateway appends, worker consumes |
//! | `chat:lease:{shard-<n>}` | string worker id, with TTL | worker |
//! | `chat:fence:{shard-<n>}:<group>` | integer, the fencing token of the group's current reading connection (one per shard and group, no TTL) | worker |
//! | `chat:applied:{messages:<room>}` | sorted set stream entry id → `seq`, entries persisted but not yet acked | worker |
//! | `chat:gateways` | hash gateway id → last heartbeat (Redis time, ms; -1: evicted, re-register) | gateway, janitor |
//! | `{chat:gateways}:evicting` | hash gateway id → janitor worker id, while (or since) a sweep removes its entries | janitor |
//! | `chat:config:stream-shards` | string, the deployment's `STREAM_SHARDS` | first process to start |
//! | `chat:workers` | hash worker id → last heartbeat (ms) | worker supervisors |
//! | `chat:lease:{janitor}` | string worker id, with TTL | the worker running the janitor |
//! | `chat:webhooks:{shard-<n>}` | stream of persisted records to POST to `WEBHOOK_URL` (group [`WEBHOOK_GROUP`]) | worker (shard task appends, webhook sender consumes) |
//! | `chat:deliver:<gateway>` | pub/sub channel of [`crate::model::envelope::DeliveryBatch`] | worker → gateway |

use crate::model::ids::RoomId;
use crate::redis::cluster::shard_tag;

/// The set of rooms with connections or unexpired history (spec key).
pub const ROOMS_ACTIVE: &str = "rooms:active";
/// The consumer group every worker joins on every shard stream.
pub const CONSUMER_GROUP: &str = "chat-fanout";
/// The consumer group of the webhook senders on every webhook outbox.
pub const WEBHOOK_GROUP: &str = "chat-webhooks";
/// Registry of live gateways with their last heartbeat time.
pub const GATEWAYS: &str = "chat:gateways";
/// Gateways whose entries a janitor sweep is removing, written before the
/// first removal and deleted after the last. A sweep cut off in between
/// leaves the mark, and the gateway re-registers on every heartbeat while it
/// stays. Its hash tag is the whole name of [`GATEWAYS`], so both keys share
/// a cluster slot and one script reads them together.
pub const GATEWAY_EVICTIONS: &str = "{chat:gateways}:evicting";
/// Registry of live workers with their last heartbeat time (fair shard share).
pub const WORKERS: &str = "chat:workers";
/// The `STREAM_SHARDS` every process of this deployment must use.
pub const STREAM_SHARDS: &str = "chat:config:stream-shards";
/// Lease of the janitor: one worker at a time sweeps.
pub const JANITOR_LEASE: &str = "chat:lease:{janitor}";
/// The key that signs anonymous sessions when `SESSION_SECRET` is unset:
/// generated once by the first gateway (`SET NX`) and read by every other.
pub const SESSION_KEY: &str = "chat:session-key";

/// History list of a room (spec key).
pub fn messages(room: &RoomId) -> String {
    format!("messages:{room}")
}

/// Open connections of a room (spec key).
pub fn connections(room: &RoomId) -> String {
    format!("connections:{room}")
}

/// Sequence state of a room, in the slot of [`messages`].
pub fn room_state(room: &RoomId) -> String {
    format!("chat:room:{{messages:{room}}}")
}

/// Index of a room's messages still in history: id → `<seq>:<author user
/// key>`, in the slot of [`messages`]. The gateway writes `:<author>` just
/// before the append (so an edit right after the ack finds its target), the
/// worker adds the `seq` when it persists and removes the entry when the
/// message is trimmed or deleted.
pub fn message_index(room: &RoomId) -> String {
    format!("chat:msg-index:{{messages:{room}}}")
}

/// Stream entries of a room that the worker persisted and has not yet
/// acked (entry id, scored by the `seq` it got), in the slot of
/// [`messages`]: the exact record the persistence script checks before it
/// takes an entry for one applied before. Emptied by each batch's ack,
/// capped in size, and expiring with the room's history.
pub fn applied(room: &RoomId) -> String {
    format!("chat:applied:{{messages:{room}}}")
}

/// Who reacted with what to each message of a room still in history, in the
/// slot of [`messages`]: makes a repeated reaction count once.
pub fn reactions(room: &RoomId) -> String {
    format!("chat:reactions:{{messages:{room}}}")
}

/// The emoji in use on message `id` of `room` (a set, at most 20): the
/// gateway reserves a new emoji here before it acks an add; the worker's
/// persist script builds the same name (`<reactions>:<id>:emoji`, beside
/// the reactors set `<reactions>:<id>`), in the slot of [`reactions`].
pub fn reaction_emoji(room: &RoomId, id: &str) -> String {
    format!("{}:{id}:emoji", reactions(room))
}

/// A ban of `user` from `room`: a string with the ban's TTL, in the slot of
/// [`connections`]. The user comes last, so no user name can collide with
/// another room's key.
pub fn ban(room: &RoomId, user: &str) -> String {
    format!("chat:ban:{{connections:{room}}}:{user}")
}

/// Gateway → connection count of a room, in the slot of [`connections`].
pub fn room_gateways(room: &RoomId) -> String {
    format!("chat:room-gateways:{{connections:{room}}}")
}

/// Connection → user (JSON of [`crate::model::presence::PresenceUser`]) of a
/// room, in the slot of [`connections`].
pub fn presence_conns(room: &RoomId) -> String {
    format!("chat:presence-conns:{{connections:{room}}}")
}

/// User key → open connections of a room, in the slot of [`connections`].
pub fn presence_users(room: &RoomId) -> String {
    format!("chat:presence-users:{{connections:{room}}}")
}

/// User key → last-read `seq` of a room, in the slot of [`messages`] (so
/// the receipt script can read the room's latest `seq` and TTL).
pub fn reads(room: &RoomId) -> String {
    format!("chat:reads:{{messages:{room}}}")
}

/// Stream of shard `n`.
pub fn stream(shard: u32) -> String {
    format!("chat:stream:{{{}}}", shard_tag(shard))
}

/// Webhook outbox of shard `n`: the shard's persisted records waiting to be
/// POSTed, in the slot of its stream and lease.
pub fn webhook_outbox(shard: u32) -> String {
    format!("chat:webhooks:{{{}}}", shard_tag(shard))
}

/// Deduplication marker of a message with a `client_id`: `(room, user,
/// client_id)` → the stored message's `id` and `timestamp`. It carries the
/// shard's hash tag so the append script touches one slot. The parts are
/// length-prefixed, so no choice of names can make two markers collide.
pub fn dedupe(shard: u32, room: &RoomId, user: &str, client_id: &str) -> String {
    format!(
        "chat:dedupe:{{{}}}:{}:{room}:{}:{user}:{client_id}",
        shard_tag(shard),
        room.as_str().len(),
        user.len()
    )
}

/// Message budget of one user (`sub`, or `ip:<addr>` when anonymous),
/// shared by every gateway.
pub fn user_budget(user: &str) -> String {
    format!("chat:budget:{{{user}}}")
}

/// Room-creation budget of one user (`sub`, or `ip:<addr>`).
pub fn room_creation_budget(user: &str) -> String {
    format!("chat:budget:{{rooms:{user}}}")
}

/// Lease of shard `n`, in the slot of its stream.
pub fn lease(shard: u32) -> String {
    format!("chat:lease:{{{}}}", shard_tag(shard))
}

/// The fencing token of the connection that reads `group` on shard
/// `shard`, in the slot of [`lease`]: each (re)connection takes a new one,
/// so a request of an older connection that reaches Redis late does nothing.
pub fn read_fence(shard: u32, group: &str) -> String {
    format!("chat:fence:{{{}}}:{group}", shard_tag(shard))
}

/// Pub/sub channel of one gateway.
pub fn gateway_channel(gateway_id: &str) -> String {
    format!("chat:deliver:{gateway_id}")
}

/// The member stored in `connections:<room>` for one connection.
pub fn connection_member(gateway_id: &str, conn_id: &str) -> String {
    format!("{gateway_id}/{conn_id}")
}

/// The shard of a room: FNV-1a (64 bit) of the room id modulo `shards`.
///
/// Stable across processes, versions and platforms: every gateway must map a
/// room to the same stream, or per-room order would be lost.
pub fn shard_of(room: &RoomId, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_evictions_share_the_slot_of_the_gateway_registry() {
        use crate::redis::cluster::slot_of;
        assert_eq!(
            slot_of(GATEWAY_EVICTIONS.as_bytes()),
            slot_of(GATEWAYS.as_bytes())
        );
    }

    #[test]
    fn spec_keys_keep_their_names() {
        let r = RoomId::parse("lobby").unwrap();
        assert_eq!(messages(&r), "messages:lobby");
        assert_eq!(connections(&r), "connections:lobby");
        assert_eq!(room_state(&r), "chat:room:{messages:lobby}");
        assert_eq!(room_gateways(&r), "chat:room-gateways:{connections:lobby}");
        assert_eq!(
            presence_conns(&r),
            "chat:presence-conns:{connections:lobby}"
        );
        assert_eq!(
            presence_users(&r),
            "chat:presence-users:{connections:lobby}"
        );
        assert_eq!(reads(&r), "chat:reads:{messages:lobby}");
        assert_eq!(message_index(&r), "chat:msg-index:{messages:lobby}");
        assert_eq!(reactions(&r), "chat:reactions:{messages:lobby}");
    }

    #[test]
    fn shard_is_stable_and_in_range() {
        let r = RoomId::parse("lobby").unwrap();
        // Pinned: changing the hash would reorder rooms during a rolling upgrade.
        // FNV-1a 64 of "lobby" is 0x1ccae3b6ef72f533.
        assert_eq!(shard_of(&r, 16), 3);
        assert_eq!(shard_of(&r, 1000), 243);
        assert_eq!(shard_of(&r, 1), 0);
        for i in 0..1000 {
            let r = RoomId::parse(&format!("room-{i}")).unwrap();
            assert!(shard_of(&r, 16) < 16);
        }
        assert_eq!(
            shard_of(&RoomId::parse("a").unwrap(), 1 << 30),
            0xaf63dc4c8601ec8c_u64 as u32 % (1 << 30)
        );
    }
}
