//! One client connection from upgrade to close.
//!
//! Lifecycle: join the local registry (so live deliveries start queueing),
//! register in Redis (so workers route to this gateway), read history in one
//! consistent snapshot and send it, then run the [`Reader`] and the
//! [`Writer`] side by side until one of them ends, close with the reason's
//! code, and deregister. The halves share only the connection's queue (the
//! reader puts its replies behind live deliveries), so a client that is slow
//! to read is still read, and a pending append never holds up deliveries.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use chat_shared::ephemeral::PresenceKind;
use chat_shared::ids::{RoomId, Username};
use chat_shared::metrics as m;
use chat_shared::presence::PresenceUser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::close::CloseReason;
use super::opening::{open, session_frame};
use super::outgoing::Outgoing;
use super::reader::Reader;
use super::recovery::RoomHistory;
use super::writer::{Writer, WriterLimits};
use super::Resume;
use crate::delivery::queue;
use crate::edge::access::IpSlot;
use crate::edge::auth::Identity;
use crate::edge::listener::AbortSwitch;
use crate::edge::session::AnonSession;
use crate::rooms::presence;
use crate::rooms::presence_events;
use crate::rooms::registrar::PendingPermit;
use crate::state::AppState;
use crate::transport::Transport;

/// How long the close frame may take before the socket is reset instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One admitted WebSocket request and what it was opened with.
///
/// It is boxed until the upgrade completes and [`Connection::run`] takes it
/// apart: whatever an `async fn` is called with stays in its future for the
/// whole connection, next to the copies its body moves the values into.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Shared gateway state.
    pub(crate) state: AppState,
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
    /// The server-issued identity, when authentication is off.
    pub(crate) anon: Option<AnonSession>,
    /// The client IP's connection slot; released when the connection ends.
    pub(crate) slot: IpSlot,
    /// The gateway-wide connection permit; released when the connection ends.
    pub(crate) permit: OwnedSemaphorePermit,
    /// Its place among the connections being opened
    /// (`MAX_PENDING_REGISTRATIONS`); released once it is opened.
    pub(crate) pending: PendingPermit,
    /// Resets the TCP socket on close when the peer stopped reading.
    pub(crate) abort: AbortSwitch,
    /// What carries the frames (the metrics' `transport` label).
    pub(crate) transport: Transport,
}

impl Connection {
    /// Serves the upgraded `socket` until the connection ends; never panics
    /// on client input.
    ///
    /// The future is allocated once per connection and lives as long as it:
    /// what only opening and closing need (registration, the join history,
    /// the close frame) runs in boxed futures of their own, and only the
    /// two halves and what the close needs are held while serving.
    pub(crate) async fn run(self: Box<Self>, socket: Box<WebSocket>) {
        let (sink, stream) = unbox(socket).split();
        let ping_interval = self.state.config.ping_interval();
        Box::pin(self.serve_on(sink, stream, ping_interval)).await;
    }

    /// Serves the connection over any transport that takes and gives
    /// WebSocket messages (`/sse` adapts its stream and encodes them,
    /// [`Outgoing`]), with a ping (or keep-alive) every `ping_interval`,
    /// until it ends; returns why.
    pub(crate) async fn serve_on<S, R, M>(
        self: Box<Self>,
        mut sink: S,
        mut stream: R,
        ping_interval: Duration,
    ) -> CloseReason
    where
        S: futures_util::Sink<M, Error = axum::Error> + Unpin,
        M: Outgoing,
        R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let Self {
            state,
            room,
            username,
            conn_id,
            resume,
            identity,
            anon,
            slot,
            permit,
            pending,
            abort,
            transport,
        } = unbox(self);
        let conn_key = presence::conn_key(conn_id);
        let kick = CancellationToken::new();
        let (tx, deliveries) = queue::channel(state.config.outbound_queue as usize);
        let user = match &identity {
            Some(i) => PresenceUser::new(i.name.as_str(), Some(&i.user_id)),
            None => PresenceUser::new(username.as_str(), anon.as_ref().map(|a| a.user_id.as_str())),
        };
        let membership = state.rooms.join(
            room.as_str(),
            conn_id,
            user.clone(),
            tx.clone(),
            kick.clone(),
        );
        // The reader queues its replies in the same queue as live deliveries.
        let mut reader = opened(
            Reader::new(
                state.clone(),
                room.clone(),
                username,
                identity,
                anon.as_ref().map(|a| a.user_id.clone()),
                slot.ip(),
                tx,
            )
            .with_conn_key(&conn_key),
            transport,
        );
        let cfg = &state.config;
        let limits = WriterLimits {
            write_timeout: cfg.write_timeout(),
            ping_interval,
            reset_tail: cfg.history_on_join,
        };
        let session = anon.map(|a| session_frame(&a.user_id, &a.session));
        let opening = open(
            &state, &room, &conn_key, &user, resume, session, &mut sink, &kick, limits, pending,
        );
        let reason = match Box::pin(opening).await {
            Err(reason) => reason,
            Ok(cursor) => {
                let history = RoomHistory {
                    state: state.clone(),
                    room: room.clone(),
                };
                let mut writer = Writer::new(
                    room.clone(),
                    history,
                    cursor,
                    deliveries,
                    kick.clone(),
                    limits,
                );
                let serving = serve(
                    &mut sink,
                    &mut stream,
                    &mut reader,
                    &mut writer,
                    limits.write_timeout,
                );
                serving.await
            }
        };

        Box::pin(close(&mut sink, reason, &abort)).await;
        drop(membership);
        // Also after a failed registration: removing a member that is not
        // there changes nothing.
        let removed =
            presence::remove_connection(&state.redis, &state.gateway_id, &room, &conn_key);
        match Box::pin(removed).await {
            Ok(removed) => {
                let leave =
                    presence_events::announce(&state, &room, PresenceKind::Leave, &removed.left);
                Box::pin(leave).await;
            }
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "unregister").increment(1);
                tracing::warn!(error = %e, "Cannot remove connection from Redis; the janitor will");
            }
        }
        state
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let label = transport.label();
        metrics::gauge!(m::GW_CONNECTIONS, "transport" => label).decrement(1.0);
        metrics::counter!(m::GW_CONNECTIONS_CLOSED, "reason" => reason.label(), "transport" => label)
            .increment(1);
        tracing::info!(
            reason = reason.label(),
            transport = label,
            "Connection closed"
        );
        drop(permit);
        drop(slot);
        reason
    }
}

/// Counts and logs an opened connection. A plain function: a value borrowed
/// in an `async fn` keeps its room in the future until the end of its scope.
fn opened(reader: Reader, transport: Transport) -> Reader {
    let state = reader.state();
    state
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let label = transport.label();
    metrics::counter!(m::GW_CONNECTIONS_OPENED, "transport" => label).increment(1);
    metrics::gauge!(m::GW_CONNECTIONS, "transport" => label).increment(1.0);
    tracing::info!(
        username = reader.username(),
        transport = label,
        "Connection opened"
    );
    reader
}

/// Moves a value out of its box and frees the box at once (a box moved out
/// of in an `async fn` is freed only when the function returns).
#[allow(clippy::boxed_local)] // Taking the box is the point.
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Runs both halves until one ends. The halves are borrowed, not moved in:
/// an `async fn` keeps its by-value arguments twice (as passed, and moved
/// into its body), and these live as long as the connection.
async fn serve<S, R, M>(
    sink: &mut S,
    stream: &mut R,
    reader: &mut Reader,
    writer: &mut Writer<RoomHistory>,
    write_timeout: Duration,
) -> CloseReason
where
    S: futures_util::Sink<M, Error = axum::Error> + Unpin,
    M: Outgoing,
    R: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let read = reader.run(stream);
    let write = writer.run(sink);
    tokio::pin!(read, write);
    tokio::select! {
        reason = &mut read => {
            // The reader has ended: let the writer write what the reader
            // queued last (e.g. the ack of an append finished during the
            // drain), up to the reader's end marker, bounded like any write.
            let _ = tokio::time::timeout(write_timeout, &mut write).await;
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
async fn close<S, M>(sink: &mut S, reason: CloseReason, abort: &AbortSwitch)
where
    S: futures_util::Sink<M, Error = axum::Error> + Unpin,
    M: Outgoing,
{
    let sent = match reason.frame() {
        Some(frame) => tokio::time::timeout(
            CLOSE_TIMEOUT,
            sink.send(M::from(Message::Close(Some(frame)))),
        )
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

    /// Every open connection holds both halves' futures, inside the one
    /// that serves them, for as long as it is open: their size is per idle
    /// connection. What they need only for a message (an append, a history
    /// read, a gap fill) is boxed, and the halves are borrowed rather than
    /// moved in (an `async fn` keeps its by-value arguments twice).
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
        let (tx, _rx) = queue::channel(4);
        let mut reader = Reader::new(
            state.clone(),
            room.clone(),
            Username::default(),
            None,
            None,
            "127.0.0.1".parse().unwrap(),
            tx,
        );
        let mut stream = futures_util::stream::empty::<Result<Message, axum::Error>>();
        let reader_size = std::mem::size_of_val(&reader.run(&mut stream));
        let (_dtx, drx) = queue::channel(4);
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
        let mut sink = Vec::<Message>::new()
            .sink_map_err(|e: std::convert::Infallible| -> axum::Error { match e {} });
        let writer_size = std::mem::size_of_val(&writer.run(&mut sink));
        let both = serve(
            &mut sink,
            &mut stream,
            &mut reader,
            &mut writer,
            limits.write_timeout,
        );
        let both_size = std::mem::size_of_val(&both);

        // Measured 520, 504 and 1,256 B (the same in test and release
        // builds); the whole connection task was 5.8 KiB before this bound.
        assert!(
            reader_size <= 576 && writer_size <= 560 && both_size <= 1376,
            "reader {reader_size} B, writer {writer_size} B, both {both_size} B"
        );
    }
}
