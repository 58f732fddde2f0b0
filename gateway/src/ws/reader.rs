//! The reading half of a connection: inbound frames in, replies out.
//!
//! It never writes to the socket: acks, errors and history pages go to the
//! writer through the connection's bounded queue, so a client whose socket
//! is full (it is busy sending) is still read. Messages are checked here and
//! stored by the connection's [`Appender`], in batches, while reading goes
//! on; once the connection has one, every reply goes through it too, so the
//! client gets its answers in the order it sent the frames. A message that
//! fails a check here is refused through the appender as well, since the
//! send-order rule after an `unavailable` refusal (DESIGN.md) is decided
//! there, in reading order. A fast sender is
//! slowed by TCP once `APPEND_PIPELINE_DEPTH` messages are waiting, not
//! buffered. The per-connection rate limit and the idle timeout are enforced
//! here.
//!
//! This file reads and dispatches frames and answers the requests (token
//! refresh, history pages); `messages` checks what is stored in the room
//! (messages, room events) and `room` the ephemeral room features.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::Message;
use chat_shared::envelope::{EventKind, RoomEvent};
use chat_shared::ids::{RoomId, Username};
use chat_shared::metrics as m;
use chat_shared::protocol::{
    error_frame, history_frames, parse_client_frame, ClientFrame, ErrorCode, HistoryRequest,
    ProtocolError, HISTORY_FRAME_BYTES,
};
use futures_util::{Stream, StreamExt};

mod messages;
mod once;
pub(crate) use once::OneShot;
mod room;

use super::appender::Appender;
use super::close::CloseReason;
use crate::delivery::queue;
use crate::delivery::registry::Outbound;
use crate::edge::auth::Identity;
use crate::edge::rate_limit::TokenBucket;
use crate::rooms::history::{self, Range};
use crate::state::AppState;

/// The writer has gone: the connection is ending.
#[derive(Debug)]
struct WriterGone;

/// The inbound half of one connection.
#[derive(Debug)]
pub(crate) struct Reader {
    state: AppState,
    room: RoomId,
    username: Username,
    /// The verified user; replaced by a `refresh`.
    identity: Option<Identity>,
    /// The server-issued `anon-…` id when authentication is off.
    anon_id: Option<String>,
    client_ip: IpAddr,
    replies: queue::Sender<Outbound>,
    bucket: TokenBucket,
    /// The room is known to exist (has history): no creation budget to spend.
    room_exists: bool,
    /// Typing limit and Redis member for the ephemeral room features.
    features: room::RoomFeatures,
    /// Stores this connection's messages; started by its first message.
    appender: Option<Appender>,
}

impl Reader {
    /// A reader for a connection to `room` whose replies go to `replies`.
    pub(super) fn new(
        state: AppState,
        room: RoomId,
        username: Username,
        identity: Option<Identity>,
        anon_id: Option<String>,
        client_ip: IpAddr,
        replies: queue::Sender<Outbound>,
    ) -> Self {
        let bucket = TokenBucket::new(
            state.config.rate_limit_per_sec,
            state.config.rate_limit_burst,
            Instant::now(),
        );
        Self {
            state,
            room,
            username,
            identity,
            anon_id,
            client_ip,
            replies,
            bucket,
            room_exists: false,
            features: room::RoomFeatures::default(),
            appender: None,
        }
    }

    /// The gateway state this reader was made with.
    pub(super) fn state(&self) -> &AppState {
        &self.state
    }

    /// The sender name of the connection's messages.
    pub(super) fn username(&self) -> &str {
        self.username.as_str()
    }

    /// The user key of everything this connection does: the token's `sub`,
    /// else the server-issued anonymous id.
    fn user_id(&self) -> Option<&str> {
        match &self.identity {
            Some(i) => Some(&i.user_id),
            None => self.anon_id.as_deref(),
        }
    }

    /// When the connection's token expires (far in the future without one).
    fn expiry(&self) -> tokio::time::Instant {
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let Some(identity) = &self.identity else {
            return far;
        };
        let now = jsonwebtoken::get_current_timestamp();
        let left = Duration::from_secs(identity.expires_at.saturating_sub(now));
        tokio::time::Instant::now() + left
    }

    /// Reads frames until the connection ends, and returns why. Last, it
    /// queues [`Outbound::ReaderDone`], which tells the writer that every
    /// reply is ahead of it.
    ///
    /// On close or shutdown, the messages already read are stored and
    /// answered first: a message that was stored is acked.
    pub(super) async fn run<S>(&mut self, stream: &mut S) -> CloseReason
    where
        S: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let reason = self.read(stream).await;
        self.finish().await;
        reason
    }

    /// Stores and answers what was read, then queues
    /// [`Outbound::ReaderDone`] behind the answers.
    async fn finish(&mut self) {
        if let Some(appender) = self.appender.take() {
            appender.finish().await;
        }
        let _ = self.replies.send(Outbound::ReaderDone).await;
    }

    async fn read<S>(&mut self, stream: &mut S) -> CloseReason
    where
        S: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let idle = self.state.config.idle_timeout();
        let shutdown = self.state.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let expired = tokio::time::sleep_until(self.expiry());
        tokio::pin!(expired);
        loop {
            let inbound = tokio::select! {
                biased;
                _ = &mut shutdown => return CloseReason::Shutdown,
                _ = &mut expired => {
                    tracing::info!("Token expired without refresh");
                    return CloseReason::TokenExpired;
                }
                next = tokio::time::timeout(idle, stream.next()) => match next {
                    // Nothing at all, not even a pong, within the idle timeout.
                    Err(_) => return CloseReason::IdleTimeout,
                    Ok(next) => next,
                },
            };
            let handled = match inbound {
                None | Some(Ok(Message::Close(_))) => return CloseReason::Client,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Socket error");
                    return CloseReason::from_socket_error(&e);
                }
                Some(Ok(Message::Text(text))) => {
                    let before = self.identity.as_ref().map(|i| i.expires_at);
                    // Boxed: the handling (an append, a history read) is far
                    // larger than the loop around it, and every idle
                    // connection would otherwise carry its size.
                    let handled = Box::pin(self.on_text(text.as_str())).await;
                    if self.identity.as_ref().map(|i| i.expires_at) != before {
                        expired.as_mut().reset(self.expiry());
                    }
                    handled
                }
                Some(Ok(Message::Binary(_))) => {
                    let err = self.rate_limit().unwrap_or_else(|| {
                        ProtocolError::new(
                            ErrorCode::BinaryNotSupported,
                            "binary frames are not supported; send JSON text frames",
                        )
                    });
                    // Boxed like `on_text`: rare, and larger than the loop.
                    Box::pin(self.reply_error(&err, None)).await
                }
                // tungstenite answers pings itself and keeps one pong pending
                // at most (a newer ping replaces it), so a flood queues
                // nothing; each ping still spends a token, so a flood also
                // starves the sender's own frames.
                Some(Ok(Message::Ping(_))) => {
                    let _ = self.rate_limit();
                    Ok(())
                }
                Some(Ok(Message::Pong(_))) => Ok(()),
            };
            if handled.is_err() {
                // The writer ended first; its reason is the one reported.
                return CloseReason::SocketError;
            }
        }
    }

    /// Handles one text frame: a chat message is appended before the next
    /// frame is read.
    async fn on_text(&mut self, text: &str) -> Result<(), WriterGone> {
        if let Some(limited) = self.rate_limit() {
            return self.reply_error(&limited, None).await;
        }
        let max_frame = self.state.config.max_frame_bytes;
        if text.len() > max_frame {
            let err = ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!("frame is larger than {max_frame} bytes"),
            );
            return self.reply_error(&err, None).await;
        }
        match parse_client_frame(text, &self.room, &self.state.limits) {
            Err(rejected) => {
                self.reply_error(&rejected.error, rejected.client_id.as_deref())
                    .await
            }
            Ok(ClientFrame::Message(msg)) => self.on_message(msg).await,
            Ok(ClientFrame::History(req)) => self.on_history(req).await,
            Ok(ClientFrame::Refresh(token)) => self.on_refresh(&token).await,
            Ok(ClientFrame::Presence) => self.on_presence().await,
            Ok(ClientFrame::Typing(active)) => self.on_typing(active).await,
            Ok(ClientFrame::Read(seq)) => self.on_read(seq).await,
            Ok(ClientFrame::Edit(req)) => {
                let event = RoomEvent::new(EventKind::Edit, req.id);
                self.on_event(event, req.message, req.client_id).await
            }
            Ok(ClientFrame::Delete(req)) => {
                let event = RoomEvent::new(EventKind::Delete, req.id);
                self.on_event(event, String::new(), req.client_id).await
            }
            Ok(ClientFrame::React(req)) => {
                let event = RoomEvent {
                    emoji: Some(req.emoji),
                    op: Some(req.op),
                    ..RoomEvent::new(EventKind::React, req.id)
                };
                self.on_event(event, String::new(), req.client_id).await
            }
        }
    }

    /// Spends a token; every data frame does, valid or not, so a flood of
    /// bad frames is limited too.
    fn rate_limit(&mut self) -> Option<ProtocolError> {
        if self.bucket.try_take(Instant::now()) {
            return None;
        }
        metrics::counter!(m::GW_RATE_LIMITED).increment(1);
        Some(ProtocolError::new(
            ErrorCode::RateLimited,
            "too many frames; slow down",
        ))
    }

    /// Replaces the connection's token with a fresh one for the same user.
    async fn on_refresh(&mut self, token: &str) -> Result<(), WriterGone> {
        let (Some(auth), Some(current)) = (&self.state.auth, &self.identity) else {
            let err = ProtocolError::new(ErrorCode::Forbidden, "authentication is not enabled");
            return self.reply_error(&err, None).await;
        };
        match auth.verify_async(token).await {
            Err(e) => {
                let err = ProtocolError::new(ErrorCode::Unauthorized, e.to_string());
                self.reply_error(&err, None).await
            }
            Ok(fresh) if fresh.user_id != current.user_id => {
                tracing::info!(
                    user = current.user_id,
                    "Refresh refused: token of another user"
                );
                let err =
                    ProtocolError::new(ErrorCode::Forbidden, "the new token names another user");
                self.reply_error(&err, None).await
            }
            Ok(fresh) if !fresh.may_join(&self.room) => {
                let err = ProtocolError::new(
                    ErrorCode::Forbidden,
                    "the new token does not allow this room",
                );
                self.reply_error(&err, None).await
            }
            Ok(fresh) => {
                metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => "accepted").increment(1);
                self.identity = Some(fresh);
                Ok(())
            }
        }
    }

    /// Answers a history page request.
    async fn on_history(&mut self, req: HistoryRequest) -> Result<(), WriterGone> {
        metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => "accepted").increment(1);
        let cfg = &self.state.config;
        let limit = req
            .limit
            .unwrap_or(cfg.history_on_join.clamp(1, cfg.history_page_max as usize));
        let range = match req.before_seq {
            Some(before) => Range::Before { before, limit },
            None => Range::Tail(limit),
        };
        match history::read(&self.state.redis, &self.room, range).await {
            Ok(snap) => {
                let page = snap.records.iter().map(|(_, r)| r.as_str());
                for frame in history_frames(&snap.meta(&self.room), page, HISTORY_FRAME_BYTES) {
                    self.reply(frame).await?;
                }
                Ok(())
            }
            Err(_) => {
                let err = ProtocolError::new(
                    ErrorCode::Unavailable,
                    "history unavailable: Redis unreachable",
                );
                self.reply(error_frame(&err, None)).await
            }
        }
    }

    async fn reply_error(
        &self,
        err: &ProtocolError,
        client_id: Option<&str>,
    ) -> Result<(), WriterGone> {
        metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => err.code.as_str()).increment(1);
        self.reply(error_frame(err, client_id)).await
    }

    /// Queues a reply for the writer, behind the answers to the messages
    /// read before; waits while the queue is full (the client is not
    /// reading: the registry's next delivery or the writer's timeout then
    /// ends the connection as a slow consumer).
    async fn reply(&self, frame: String) -> Result<(), WriterGone> {
        if let Some(appender) = &self.appender {
            return appender.reply(frame).await.map_err(|_| WriterGone);
        }
        self.replies
            .send(Outbound::Reply(Box::new(frame.into())))
            .await
            .map_err(|_| WriterGone)
    }
}
