//! One client connection from upgrade to close.
//!
//! Lifecycle: join the local registry (so live deliveries start queueing),
//! register in Redis (so workers route to this gateway), read history in one
//! consistent snapshot and send it, then run the [`Reader`] and the
//! [`Writer`] side by side until one of them ends, close with the reason's
//! code, and deregister. The halves share only the connection's queue (the
//! reader puts its replies behind live deliveries), so a client that is slow
//! to read is still read, and a pending append never holds up deliveries.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use chat_shared::ephemeral::PresenceKind;
use chat_shared::ids::{RoomId, Username};
use chat_shared::metrics as m;
use chat_shared::presence::PresenceUser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::close::CloseReason;
use super::reader::Reader;
use super::recovery::{self, RoomHistory};
use super::writer::{bounded_write, Writer, WriterLimits};
use super::Resume;
use crate::auth::Identity;
use crate::listener::AbortSwitch;
use crate::presence;
use crate::presence_events;
use crate::state::AppState;

/// How long the close frame may take before the socket is reset instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One accepted WebSocket and what it was opened with.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Shared gateway state.
    pub(crate) state: AppState,
    /// The upgraded socket.
    pub(crate) socket: WebSocket,
    /// The room joined.
    pub(crate) room: RoomId,
    /// The display name from the query (or the default).
    pub(crate) username: Username,
    /// Unique per gateway process.
    pub(crate) conn_id: u64,
    /// Where the client's history starts (`since`), if it asked.
    pub(crate) resume: Option<Resume>,
    /// The verified user, when authentication is on.
    pub(crate) identity: Option<Identity>,
    /// The client's IP (its per-user budget key when anonymous).
    pub(crate) client_ip: IpAddr,
    /// Resets the TCP socket on close when the peer stopped reading.
    pub(crate) abort: AbortSwitch,
}

impl Connection {
    /// Serves the connection until it ends; never panics on client input.
    pub(crate) async fn run(self) {
        let Self {
            state,
            socket,
            room,
            username,
            conn_id,
            resume,
            identity,
            client_ip,
            abort,
        } = self;
        let conn_key = presence::conn_key(conn_id);
        let kick = CancellationToken::new();
        let (tx, deliveries) = mpsc::channel(state.config.outbound_queue as usize);
        // The reader queues its replies in the same queue as live deliveries.
        let replies = tx.clone();
        let user = match &identity {
            Some(i) => PresenceUser::new(i.name.as_str(), Some(&i.user_id)),
            None => PresenceUser::new(username.as_str(), None),
        };
        let membership = state
            .rooms
            .join(room.as_str(), conn_id, user.clone(), tx, kick.clone());
        state
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(m::GW_CONNECTIONS_OPENED).increment(1);
        metrics::gauge!(m::GW_CONNECTIONS).increment(1.0);
        tracing::info!(username = username.as_str(), "Connection opened");

        let (mut sink, mut stream) = socket.split();
        let history = RoomHistory {
            state: state.clone(),
            room: room.clone(),
        };
        let me = chat_shared::keys::connection_member(&state.gateway_id, &conn_key);
        let registered =
            presence::add_connection(&state.redis, &state.gateway_id, &room, &conn_key, &user)
                .await;
        let reason = match registered {
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "register").increment(1);
                tracing::warn!(error = %e, "Cannot register connection in Redis");
                CloseReason::Unavailable
            }
            // Checked again once registered: a ban placed while this
            // connection was being admitted found no connection to close.
            // Its join is announced too, so the leave on close pairs with it.
            Ok(joined) if banned_now(&state, &room, &user.key).await => {
                presence_events::announce_except(
                    &state,
                    &room,
                    PresenceKind::Join,
                    &joined,
                    Some(&me),
                )
                .await;
                CloseReason::Banned
            }
            Ok(joined) => {
                // The other members learn it; the joiner knows.
                presence_events::announce_except(
                    &state,
                    &room,
                    PresenceKind::Join,
                    &joined,
                    Some(&me),
                )
                .await;
                let cfg = &state.config;
                match recovery::join(&history, &room, resume.as_ref(), cfg.history_on_join).await {
                    Err(e) => {
                        metrics::counter!(m::GW_REDIS_ERRORS, "op" => "history").increment(1);
                        tracing::warn!(error = %e, "Cannot read history on join");
                        CloseReason::Unavailable
                    }
                    Ok(joined) => {
                        let limits = WriterLimits {
                            write_timeout: cfg.write_timeout(),
                            ping_interval: cfg.ping_interval(),
                            reset_tail: cfg.history_on_join,
                        };
                        let writer = Writer::new(
                            room.clone(),
                            history,
                            joined.cursor,
                            deliveries,
                            kick.clone(),
                            limits,
                        );
                        let reader = Reader::new(
                            state.clone(),
                            room.clone(),
                            username,
                            identity,
                            client_ip,
                            replies,
                        )
                        .with_conn_key(&conn_key);
                        serve(
                            &mut sink,
                            &mut stream,
                            joined.frames,
                            reader,
                            writer,
                            &kick,
                            limits,
                        )
                        .await
                    }
                }
            }
        };

        close(&mut sink, reason, &abort).await;
        drop(membership);
        // Also after a failed registration: removing a member that is not
        // there changes nothing.
        match presence::remove_connection(&state.redis, &state.gateway_id, &room, &conn_key).await {
            Ok(removed) => {
                presence_events::announce(&state, &room, PresenceKind::Leave, &removed.left).await;
            }
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "unregister").increment(1);
                tracing::warn!(error = %e, "Cannot remove connection from Redis; the janitor will");
            }
        }
        state
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(m::GW_CONNECTIONS).decrement(1.0);
        metrics::counter!(m::GW_CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
        tracing::info!(reason = reason.label(), "Connection closed");
    }
}

/// Whether `user` is banned from `room` now (`false` when Redis does not
/// answer: the upgrade's check already passed).
async fn banned_now(state: &AppState, room: &RoomId, user: &str) -> bool {
    crate::bans::enabled(state)
        && crate::bans::is_banned(&state.redis, room, user)
            .await
            .unwrap_or(false)
}

/// Sends the join history, then runs both halves until one ends.
async fn serve<S, R>(
    sink: &mut S,
    stream: &mut R,
    join_frames: Vec<String>,
    reader: Reader,
    mut writer: Writer<RoomHistory>,
    kick: &CancellationToken,
    limits: WriterLimits,
) -> CloseReason
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
    R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    for frame in join_frames {
        if let Err(reason) = bounded_write(
            limits.write_timeout,
            kick,
            sink.feed(Message::Text(frame.into())),
        )
        .await
        {
            return reason;
        }
    }
    if let Err(reason) = bounded_write(limits.write_timeout, kick, sink.flush()).await {
        return reason;
    }
    let read = reader.run(stream);
    let write = writer.run(sink);
    tokio::pin!(read, write);
    tokio::select! {
        reason = &mut read => {
            // The reader's queue is closed now: let the writer write what the
            // reader queued last (e.g. the ack of an append finished during
            // the drain), bounded like any write.
            let _ = tokio::time::timeout(limits.write_timeout, &mut write).await;
            reason
        }
        written = &mut write => match written {
            Err(reason) => reason,
            // Only possible once the reader has ended, which the other
            // branch handles; kept total for safety.
            Ok(()) => CloseReason::Client,
        },
    }
}

/// Sends the close frame for `reason`, or resets the socket when the peer
/// does not take it in time (it stopped reading: its queued bytes would
/// otherwise sit in kernel memory).
async fn close<S>(sink: &mut S, reason: CloseReason, abort: &AbortSwitch)
where
    S: futures_util::Sink<Message, Error = axum::Error> + Unpin,
{
    let sent = match reason.frame() {
        Some(frame) => tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame))))
            .await
            .is_ok_and(|r| r.is_ok()),
        // The peer closed: complete the close handshake if it still listens.
        None => tokio::time::timeout(CLOSE_TIMEOUT, sink.close())
            .await
            .is_ok(),
    };
    if !sent && reason != CloseReason::SocketError {
        metrics::counter!(m::GW_SOCKETS_ABORTED).increment(1);
        abort.abort_on_close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Every open connection holds both futures while it idles: what they
    /// need only for a message (an append, a history read) is boxed, so their
    /// size is per connection, not per Redis call. Measured at about 1 KiB
    /// each; twice the total of the halves would show in the benchmark's
    /// bytes per idle connection.
    #[tokio::test]
    async fn an_idle_connections_futures_stay_small() {
        let cfg = crate::config::GatewayConfig::parse_from(["chat-gateway"]);
        let redis = chat_shared::redis::RedisHandle::new(&cfg.redis).unwrap();
        let state = AppState::new(
            cfg,
            "g".into(),
            redis.clone(),
            None,
            CancellationToken::new(),
        )
        .unwrap();
        let room = RoomId::parse("r").unwrap();
        let (tx, _rx) = mpsc::channel(4);
        let reader = Reader::new(
            state.clone(),
            room.clone(),
            Username::default(),
            None,
            "127.0.0.1".parse().unwrap(),
            tx,
        );
        let mut stream = futures_util::stream::empty::<Result<Message, axum::Error>>();
        let f = reader.run(&mut stream);
        let reader_size = std::mem::size_of_val(&f);
        let (_dtx, drx) = mpsc::channel(4);
        let history = RoomHistory {
            state: state.clone(),
            room: room.clone(),
        };
        let limits = WriterLimits {
            write_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_secs(1),
            reset_tail: 1,
        };
        let mut writer = Writer::new(
            room,
            history,
            crate::ws::cursor::Cursor::default(),
            drx,
            CancellationToken::new(),
            limits,
        );
        let mut sink: Vec<Message> = Vec::new();
        let w = writer.run(&mut sink);
        let writer_size = std::mem::size_of_val(&w);

        assert!(
            reader_size <= 1280 && writer_size <= 1280,
            "reader {reader_size} B, writer {writer_size} B"
        );
    }
}
