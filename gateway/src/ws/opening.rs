//! Opening a connection, between its upgrade and serving it: register it
//! in Redis (through the gateway's [`crate::rooms::registrar`]), announce
//! the join, check the ban again, and send the join history and the
//! anonymous session. A registration or join-history read that Redis could
//! not answer in time (it is backed up) closes the connection with 1013 and
//! a retry hint; any other Redis failure with 1011 `unavailable`.

use axum::extract::ws::Message;
use chat_shared::ephemeral::PresenceKind;
use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use chat_shared::presence::PresenceUser;
use futures_util::SinkExt;
use tokio_util::sync::CancellationToken;

use super::close::CloseReason;
use super::cursor::Cursor;
use super::outgoing::Outgoing;
use super::recovery::{self, RoomHistory};
use super::writer::{bounded_write, WriterLimits};
use super::Resume;
use crate::rooms::presence::Registration;
use crate::rooms::presence_events;
use crate::rooms::registrar::{PendingPermit, RegisterError};
use crate::state::AppState;

/// Whether `user` is banned from `room` now (`false` when Redis does not
/// answer: the upgrade's check already passed).
async fn banned_now(state: &AppState, room: &RoomId, user: &str) -> bool {
    crate::rooms::bans::enabled(state)
        && crate::rooms::bans::is_banned(&state.redis, room, user)
            .await
            .unwrap_or(false)
}

/// Registers the connection in Redis (so workers route to this gateway, and
/// the room sees the user present), reads the join history in one consistent
/// snapshot and sends it. Returns where the client is in the room's
/// sequence, or the reason to close with. `pending` (its place among the
/// connections being opened) is freed when this returns.
#[allow(clippy::too_many_arguments)]
pub(super) async fn open<S, M>(
    state: &AppState,
    room: &RoomId,
    conn_key: &str,
    user: &PresenceUser,
    resume: Option<Resume>,
    session: Option<String>,
    sink: &mut S,
    kick: &CancellationToken,
    limits: WriterLimits,
    pending: PendingPermit,
) -> Result<Cursor, CloseReason>
where
    S: futures_util::Sink<M, Error = axum::Error> + Unpin,
    M: Outgoing,
{
    let _pending = pending;
    let registration = Registration {
        room: room.clone(),
        conn: conn_key.to_owned(),
        user: user.clone(),
    };
    let joined = match state.registrar.register(registration).await {
        Ok(joined) => Vec::from_iter(joined),
        Err(e) => return Err(not_registered(state, &e)),
    };
    // The other members learn of a user's first connection; the joiner knows.
    // (Announced also when closing for a ban below: the leave on close
    // pairs with it.)
    let me = chat_shared::keys::connection_member(&state.gateway_id, conn_key);
    presence_events::announce_except(state, room, PresenceKind::Join, &joined, Some(&me)).await;
    // Checked again once registered: a ban placed while this connection was
    // being admitted found no connection to close.
    if banned_now(state, room, &user.key).await {
        return Err(CloseReason::Banned);
    }
    let history = RoomHistory {
        state: state.clone(),
        room: room.clone(),
    };
    let on_join = state.config.history_on_join;
    let joined = match recovery::join(&history, room, resume.as_ref(), on_join).await {
        Ok(joined) => joined,
        Err(e) => {
            metrics::counter!(m::GW_REDIS_ERRORS, "op" => "history").increment(1);
            if matches!(e, chat_shared::redis::RedisError::Timeout) {
                // Redis is backed up, as with a registration timeout.
                tracing::info!("Cannot read history on join in time; closing with 1013");
                return Err(overloaded(state, "history_timeout"));
            }
            tracing::warn!(error = %e, "Cannot read history on join");
            return Err(CloseReason::Unavailable);
        }
    };
    // The anonymous session goes right after the join's last history frame.
    for frame in joined.frames.into_iter().chain(session) {
        let fed = sink.feed(M::from(Message::Text(frame.into())));
        bounded_write(limits.write_timeout, kick, fed).await?;
    }
    bounded_write(limits.write_timeout, kick, sink.flush()).await?;
    Ok(joined.cursor)
}

/// The close of a connection whose registration failed: 1013 with the
/// retry hint when registrations are backed up (nothing is wrong but load:
/// the client comes back later), 1011 `unavailable` when Redis failed.
fn not_registered(state: &AppState, e: &RegisterError) -> CloseReason {
    if e.shed_reason() != Some("registration_queue") {
        metrics::counter!(m::GW_REDIS_ERRORS, "op" => "register").increment(1);
    }
    match e.shed_reason() {
        Some(reason) => {
            metrics::counter!(m::GW_CONNECTIONS_SHED, "reason" => reason).increment(1);
            tracing::info!(
                reason,
                "Cannot register connection in Redis in time; closing with 1013"
            );
            let secs = state.registrar.retry_after_secs();
            CloseReason::Overloaded {
                retry_after_secs: u16::try_from(secs).unwrap_or(u16::MAX),
            }
        }
        None => {
            tracing::warn!(error = %e, "Cannot register connection in Redis");
            CloseReason::Unavailable
        }
    }
}

/// The 1013 close with the retry hint of a connection Redis could not open
/// in time, counted by `reason` (a label of `chat_gateway_connections_shed_total`).
fn overloaded(state: &AppState, reason: &'static str) -> CloseReason {
    metrics::counter!(m::GW_CONNECTIONS_SHED, "reason" => reason).increment(1);
    state.registrar.mark_timed_out();
    let secs = state.registrar.retry_after_secs();
    CloseReason::Overloaded {
        retry_after_secs: u16::try_from(secs).unwrap_or(u16::MAX),
    }
}

/// `{"type":"session","data":{"user_id","session"}}`: the anonymous
/// identity of this connection and the value that keeps it on reconnect.
pub(super) fn session_frame(user_id: &str, session: &str) -> String {
    serde_json::json!({"type": "session", "data": {"user_id": user_id, "session": session}})
        .to_string()
}
