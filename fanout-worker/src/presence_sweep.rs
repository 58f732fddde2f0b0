//! The janitor's presence duty: announcing `leave` for the users of a dead
//! gateway whose last connection to a room it removed.
//!
//! The removal itself ([`chat_shared::connections`]) drops the presence
//! records with the connection entries in one script and reports the users
//! left with none; this publishes their `leave` to the room's remaining
//! gateways when `PRESENCE_EVENTS` is on (a `presence_count` instead in rooms
//! above `PRESENCE_EVENTS_MAX_MEMBERS` users). Best-effort like every ephemeral
//! event: a failure is counted and logged, never fails the sweep.

use chat_shared::ephemeral::{self, PresenceKind};
use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use chat_shared::presence_count::Decision;

use crate::Context;

/// Publishes `leave` for `users` (stored presence records) of `room`.
pub(crate) async fn announce_leaves(ctx: &Context, room: &RoomId, users: &[String]) {
    if users.is_empty() {
        return;
    }
    metrics::counter!(m::WK_PRESENCE_LEAVES).increment(users.len() as u64);
    if !ctx.config.presence_events {
        return;
    }
    // Large rooms get a throttled count instead (presence_count).
    match ctx.presence_counts.changed(room).await {
        Ok(Decision::PerUser) => {}
        Ok(Decision::Counted) => return,
        Err(e) => {
            metrics::counter!(m::WK_REDIS_ERRORS, "op" => "presence_leave").increment(1);
            tracing::warn!(error = %e, "Cannot decide or send a presence count");
            return;
        }
    }
    let events = ephemeral::presence_events(PresenceKind::Leave, room.as_str(), users);
    if let Err(e) = ephemeral::publish(&ctx.redis, room, events).await {
        metrics::counter!(m::WK_REDIS_ERRORS, "op" => "presence_leave").increment(1);
        tracing::warn!(error = %e, "Cannot publish the leave of a dead gateway's users");
    }
}
