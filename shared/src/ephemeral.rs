//! Ephemeral room events — `join`, `leave`, `typing`, `read` — and their
//! transport between processes.
//!
//! They are not part of a room's `seq` sequence and are never stored in
//! history: whoever produces one (a gateway, or the janitor for a dead
//! gateway's users) serializes the client frame once, looks up the room's
//! gateways (`HKEYS chat:room-gateways:{connections:<room>}`) and publishes
//! one [`crate::model::envelope::DeliveryBatch`] carrying it to each gateway's
//! channel (`SPUBLISH` on a cluster). Delivery is best-effort: a gateway
//! that is not subscribed at that moment, or a member whose queue is full,
//! misses it. The state they announce stays readable (`GET
//! /rooms/{room}/presence`, `/reads`).

use serde::Serialize;

pub use crate::model::envelope::EphemeralEvent;
use crate::model::envelope::{now_us, DeliveryBatch};
use crate::model::ids::RoomId;
use crate::model::presence::PresenceUser;
use crate::protocol::outbound::frame;
use crate::redis::keys;
use crate::redis::{RedisError, RedisHandle};

#[derive(Serialize)]
struct PresenceChange<'a> {
    room: &'a str,
    username: &'a str,
    user_id: Option<&'a str>,
    timestamp: &'a str,
}

/// Which presence change a frame announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    /// The user's first connection to the room opened.
    Join,
    /// The user's last connection to the room closed.
    Leave,
}

/// `{"type":"join"|"leave","data":{"room","username","user_id","timestamp"}}`
/// with the current time.
pub fn presence_frame(kind: PresenceKind, room: &str, user: &PresenceUser) -> String {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let kind = match kind {
        PresenceKind::Join => "join",
        PresenceKind::Leave => "leave",
    };
    frame(
        kind,
        PresenceChange {
            room,
            username: &user.username,
            user_id: user.user_id.as_deref(),
            timestamp: &timestamp,
        },
    )
}

/// `{"type":"typing","data":{"room","username","user_id","active"}}`.
pub fn typing_frame(room: &str, user: &PresenceUser, active: bool) -> String {
    #[derive(Serialize)]
    struct Typing<'a> {
        room: &'a str,
        username: &'a str,
        user_id: Option<&'a str>,
        active: bool,
    }
    frame(
        "typing",
        Typing {
            room,
            username: &user.username,
            user_id: user.user_id.as_deref(),
            active,
        },
    )
}

/// `{"type":"read","data":{"room","username","user_id","seq"}}`.
pub fn read_frame(room: &str, user: &PresenceUser, seq: u64) -> String {
    #[derive(Serialize)]
    struct Read<'a> {
        room: &'a str,
        username: &'a str,
        user_id: Option<&'a str>,
        seq: u64,
    }
    frame(
        "read",
        Read {
            room,
            username: &user.username,
            user_id: user.user_id.as_deref(),
            seq,
        },
    )
}

/// A delivery batch that carries only `events`.
pub fn event_batch(events: Vec<EphemeralEvent>) -> DeliveryBatch {
    DeliveryBatch {
        events,
        ..DeliveryBatch::new(Vec::new(), now_us())
    }
}

/// Publishes `events` of `room` to every gateway with connections in it.
/// Returns how many gateways it was sent to.
///
/// # Errors
/// Fails when Redis does not answer; the events are then lost (they are
/// best-effort).
pub async fn publish(
    redis: &RedisHandle,
    room: &RoomId,
    events: Vec<EphemeralEvent>,
) -> Result<usize, RedisError> {
    if events.is_empty() {
        return Ok(0);
    }
    publish_to_room_gateways(redis, room, &event_batch(events)).await
}

/// Publishes `batch` to every gateway with connections in `room` (one
/// `HKEYS` of the room's gateway hash, then one publish per gateway).
/// Returns how many gateways it was sent to.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn publish_to_room_gateways(
    redis: &RedisHandle,
    room: &RoomId,
    batch: &DeliveryBatch,
) -> Result<usize, RedisError> {
    let gateways: Vec<String> = redis
        .query(redis::cmd("HKEYS").arg(keys::room_gateways(room)))
        .await?;
    if gateways.is_empty() {
        return Ok(0);
    }
    let payload = batch.encode();
    let mut pipe = redis::pipe();
    for gw in &gateways {
        pipe.cmd(redis.publish_command())
            .arg(keys::gateway_channel(gw))
            .arg(&payload)
            .ignore();
    }
    redis.pipe::<()>(&pipe).await?;
    Ok(gateways.len())
}

/// Join or leave events for `users` (stored [`PresenceUser`] JSON records;
/// unreadable ones are skipped).
pub fn presence_events(kind: PresenceKind, room: &str, users: &[String]) -> Vec<EphemeralEvent> {
    users
        .iter()
        .filter_map(|u| PresenceUser::from_json(u))
        .map(|u| EphemeralEvent {
            room: room.to_owned(),
            frame: presence_frame(kind, room, &u),
            except_conn: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn frames_have_the_contract_shapes() {
        let anon = PresenceUser::new("ana", None);
        let auth = PresenceUser::new("Bo", Some("u2"));
        assert_eq!(
            parse(&typing_frame("r", &anon, true)),
            json!({"type":"typing","data":{"room":"r","username":"ana","user_id":null,"active":true}})
        );
        assert_eq!(
            parse(&read_frame("r", &auth, 7)),
            json!({"type":"read","data":{"room":"r","username":"Bo","user_id":"u2","seq":7}})
        );
        let j = parse(&presence_frame(PresenceKind::Join, "r", &auth));
        assert_eq!(j["type"], "join");
        assert_eq!(j["data"]["user_id"], "u2");
        let ts = j["data"]["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
        let l = parse(&presence_frame(PresenceKind::Leave, "r", &anon));
        assert_eq!(l["type"], "leave");
        assert_eq!(l["data"]["username"], "ana");
    }

    #[test]
    fn presence_events_skip_unreadable_records() {
        let users = vec![PresenceUser::new("ana", None).to_json(), "junk".into()];
        let ev = presence_events(PresenceKind::Leave, "r", &users);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].except_conn, None);
        assert_eq!(parse(&ev[0].frame)["type"], "leave");
    }

    #[test]
    fn event_batches_round_trip() {
        let b = event_batch(vec![EphemeralEvent {
            room: "r".into(),
            frame: "{}".into(),
            except_conn: Some("g/1".into()),
        }]);
        assert_eq!(DeliveryBatch::decode(&b.encode()).unwrap(), b);
    }
}
