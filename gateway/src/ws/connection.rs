//! One client connection: a `run()` loop over inbound frames, the bounded
//! outbound queue, keepalive and cancellation.
//!
//! Lifecycle: join the local registry (so live deliveries start queueing),
//! register in Redis (so workers route to this gateway), read history in one
//! consistent snapshot and send it, then loop. `last_seq` is the newest `seq`
//! the client has; live deliveries at or below it are repeats and are dropped,
//! one above it is sent, and a jump further ahead means something was missed
//! (e.g. while the subscription reconnected) and is filled from history first.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chat_shared::ids::{RoomId, Username};
use chat_shared::metrics as m;
use chat_shared::protocol::{
    ack_frame, error_frame, history_frames, message_frame, parse_client_frame, ClientFrame,
    ErrorCode, HistoryRequest, OutgoingMessage, ProtocolError, HISTORY_FRAME_BYTES,
};
use chat_shared::redis::RedisError;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Resume;
use crate::history::{self, Range, Snapshot};
use crate::rate_limit::TokenBucket;
use crate::rooms::{LiveMessage, Outbound};
use crate::state::AppState;
use crate::{append, presence};

/// Close codes and reasons, one per way a connection can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    /// The client closed or went away.
    Client,
    /// The server is draining (1001).
    Shutdown,
    /// The outbound queue overflowed or a write stalled (1013).
    SlowConsumer,
    /// No frame or pong within the idle timeout (1008).
    IdleTimeout,
    /// Redis was unreachable when joining (1011).
    Unavailable,
    /// A message above `WS_MAX_MESSAGE_BYTES` arrived (1009).
    TooBig,
    /// The socket failed (protocol error, oversized frame, reset).
    SocketError,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Shutdown => "shutdown",
            Self::SlowConsumer => "slow_consumer",
            Self::IdleTimeout => "idle_timeout",
            Self::Unavailable => "unavailable",
            Self::TooBig => "too_big",
            Self::SocketError => "socket_error",
        }
    }

    fn frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::Client | Self::SocketError => return None,
            Self::Shutdown => (1001, "server shutting down; reconnect"),
            Self::SlowConsumer => (1013, "slow consumer: outbound queue full"),
            Self::IdleTimeout => (1008, "idle timeout: no pong received"),
            Self::Unavailable => (1011, "redis unavailable; retry later"),
            Self::TooBig => (1009, "message larger than WS_MAX_MESSAGE_BYTES"),
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }
}

/// The sender's `client_id` and the result of appending its message.
type AppendOutcome = (Option<String>, Result<append::Appended, RedisError>);

/// An append started by a connection and driven by its `serve` loop.
type PendingAppend = Pin<Box<dyn Future<Output = AppendOutcome> + Send>>;

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// A write could not complete.
enum WriteError {
    /// The client does not read fast enough.
    Slow,
    /// The socket is gone.
    Closed,
}

/// One accepted WebSocket.
#[derive(Debug)]
pub(crate) struct Connection {
    state: AppState,
    socket: WebSocket,
    room: RoomId,
    username: Username,
    conn_id: u64,
    resume: Option<Resume>,
    last_seq: u64,
    /// The epoch `last_seq` belongs to (`None` until the room has one).
    epoch: Option<String>,
    kick: CancellationToken,
    bucket: TokenBucket,
    last_heard: Instant,
}

impl Connection {
    pub(crate) fn new(
        state: AppState,
        socket: WebSocket,
        room: RoomId,
        username: Username,
        conn_id: u64,
        resume: Option<Resume>,
    ) -> Self {
        let now = Instant::now();
        let bucket = TokenBucket::new(
            state.config.rate_limit_per_sec,
            state.config.rate_limit_burst,
            now,
        );
        Self {
            state,
            socket,
            room,
            username,
            conn_id,
            resume,
            last_seq: 0,
            epoch: None,
            kick: CancellationToken::new(),
            bucket,
            last_heard: now,
        }
    }

    /// Serves the connection until it ends; never panics on client input.
    pub(crate) async fn run(mut self) {
        let state = self.state.clone();
        let conn_key = presence::conn_key(self.conn_id);
        let (tx, rx) = mpsc::channel(state.config.outbound_queue as usize);
        let membership = state
            .rooms
            .join(self.room.as_str(), self.conn_id, tx, self.kick.clone());
        state
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(m::GW_CONNECTIONS_OPENED).increment(1);
        metrics::gauge!(m::GW_CONNECTIONS).increment(1.0);
        tracing::info!(username = self.username.as_str(), "Connection opened");

        let reason = match presence::register(
            &state.redis,
            &state.gateway_id,
            &self.room,
            &conn_key,
        )
        .await
        {
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "register").increment(1);
                tracing::warn!(error = %e, "Cannot register connection in Redis");
                CloseReason::Unavailable
            }
            Ok(()) => match self.send_join_history().await {
                Err(reason) => reason,
                Ok(()) => self.serve(rx).await,
            },
        };

        if let Some(frame) = reason.frame() {
            // The peer may not read at all: bound the close handshake.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.socket.send(Message::Close(Some(frame))),
            )
            .await;
        }
        drop(membership);
        // Also after a failed registration: removing a member that is not
        // there changes nothing.
        if let Err(e) =
            presence::unregister(&state.redis, &state.gateway_id, &self.room, &conn_key).await
        {
            metrics::counter!(m::GW_REDIS_ERRORS, "op" => "unregister").increment(1);
            tracing::warn!(error = %e, "Cannot remove connection from Redis; the janitor will");
        }
        state
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!(m::GW_CONNECTIONS).decrement(1.0);
        metrics::counter!(m::GW_CONNECTIONS_CLOSED, "reason" => reason.label()).increment(1);
        tracing::info!(reason = reason.label(), "Connection closed");
    }

    async fn serve(&mut self, mut rx: mpsc::Receiver<Outbound>) -> CloseReason {
        let cfg = self.state.config.clone();
        let shutdown = self.state.shutdown.clone();
        let mut ping = tokio::time::interval(cfg.ping_interval());
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // At most one append in flight: a client's messages stay in order, and
        // while Redis answers, deliveries keep flowing to this client. Inbound
        // reads pause meanwhile, so a fast sender is slowed by TCP, not buffered.
        let mut inflight: Option<PendingAppend> = None;
        // Created once: a cancellation future registers a waiter when first
        // polled, which per loop turn would cost two lock round trips per message.
        let shutdown_signal = shutdown.cancelled_owned();
        let kicked = self.kick.clone().cancelled_owned();
        tokio::pin!(shutdown_signal, kicked);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown_signal => {
                    if let Some(pending) = inflight.take() {
                        let _ = self.finish_append(pending.await).await;
                    }
                    return CloseReason::Shutdown;
                }
                _ = &mut kicked => return CloseReason::SlowConsumer,
                done = async { inflight.as_mut().expect("guarded by the branch condition").await }, if inflight.is_some() => {
                    inflight = None;
                    if let Err(e) = self.finish_append(done).await {
                        return write_reason(e);
                    }
                }
                inbound = self.socket.recv(), if inflight.is_none() => {
                    self.last_heard = Instant::now();
                    let result = match inbound {
                        None | Some(Ok(Message::Close(_))) => return CloseReason::Client,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "Socket error");
                            // tungstenite's capacity error; axum does not expose its type.
                            if e.to_string().contains("Space limit exceeded") {
                                return CloseReason::TooBig;
                            }
                            return CloseReason::SocketError;
                        }
                        Some(Ok(Message::Text(text))) => match self.on_text(text.as_str()).await {
                            Ok(pending) => {
                                inflight = pending;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        },
                        Some(Ok(Message::Binary(_))) => {
                            let err = self.rate_limit().unwrap_or_else(|| ProtocolError::new(
                                ErrorCode::BinaryNotSupported,
                                "binary frames are not supported; send JSON text frames",
                            ));
                            self.reply_error(&err, None).await
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    };
                    if let Err(e) = result {
                        return write_reason(e);
                    }
                }
                out = rx.recv() => {
                    // The sender half lives in the registry until this
                    // connection leaves it, so `None` cannot happen while
                    // serving; treat it as a shutdown if it ever does.
                    let Some(out) = out else { return CloseReason::Shutdown };
                    // Write what is already queued in one go and flush once:
                    // one syscall per burst instead of one per message.
                    let mut result = self.deliver(out).await;
                    let mut batch = 1;
                    while result.is_ok() && batch < WRITE_BATCH {
                        let Ok(more) = rx.try_recv() else { break };
                        result = self.deliver(more).await;
                        batch += 1;
                    }
                    if let Err(e) = result.and(self.flush().await) {
                        return write_reason(e);
                    }
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > cfg.idle_timeout() {
                        return CloseReason::IdleTimeout;
                    }
                    if let Err(e) = self.send(Message::Ping(Default::default())).await {
                        return write_reason(e);
                    }
                }
            }
        }
    }

    /// Handles one text frame; a valid chat message starts an append that
    /// the caller drives to completion.
    async fn on_text(&mut self, text: &str) -> Result<Option<PendingAppend>, WriteError> {
        if let Some(limited) = self.rate_limit() {
            return self.reply_error(&limited, None).await.map(|()| None);
        }
        let cfg = &self.state.config;
        if text.len() > cfg.max_frame_bytes {
            let err = ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!("frame is larger than {} bytes", cfg.max_frame_bytes),
            );
            return self.reply_error(&err, None).await.map(|()| None);
        }
        match parse_client_frame(text, &self.room, &self.state.limits) {
            Err(rejected) => self
                .reply_error(&rejected.error, rejected.client_id.as_deref())
                .await
                .map(|()| None),
            Ok(ClientFrame::Message(msg)) => Ok(Some(self.start_append(msg))),
            Ok(ClientFrame::History(req)) => self.on_history(req).await.map(|()| None),
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

    fn start_append(&self, msg: OutgoingMessage) -> PendingAppend {
        let username = msg.username.unwrap_or_else(|| self.username.clone());
        let redis = self.state.redis.clone();
        let shards = self.state.config.stream_shards;
        let room = self.room.clone();
        Box::pin(async move {
            let result = append::append(&redis, shards, &room, &username, msg.message).await;
            (msg.client_id, result)
        })
    }

    /// Acks a stored message, or tells the sender it was not stored.
    async fn finish_append(
        &mut self,
        (client_id, result): AppendOutcome,
    ) -> Result<(), WriteError> {
        match result {
            Ok(done) => {
                metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => "accepted").increment(1);
                let ack = ack_frame(client_id.as_deref(), &done.id, &done.timestamp);
                self.send(Message::Text(ack.into())).await
            }
            Err(_) => {
                let err = ProtocolError::new(
                    ErrorCode::Unavailable,
                    "message not stored: Redis unavailable; retry",
                );
                self.reply_error(&err, client_id.as_deref()).await
            }
        }
    }

    async fn on_history(&mut self, req: HistoryRequest) -> Result<(), WriteError> {
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
                let frames = history_frames(&snap.meta(&self.room), page, HISTORY_FRAME_BYTES);
                self.send_all(frames).await
            }
            Err(_) => {
                let err = ProtocolError::new(
                    ErrorCode::Unavailable,
                    "history unavailable: Redis unreachable",
                );
                self.send(Message::Text(error_frame(&err, None).into()))
                    .await
            }
        }
    }

    async fn reply_error(
        &mut self,
        err: &ProtocolError,
        client_id: Option<&str>,
    ) -> Result<(), WriteError> {
        metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => err.code.as_str()).increment(1);
        self.send(Message::Text(error_frame(err, client_id).into()))
            .await
    }

    /// Sends the join (or recovery) history and sets `last_seq`.
    async fn send_join_history(&mut self) -> Result<(), CloseReason> {
        let cfg = &self.state.config;
        let on_join = Range::Tail(cfg.history_on_join);
        let first = match &self.resume {
            None => on_join,
            Some(r) => Range::After(r.since),
        };
        let mut snap = history::read(&self.state.redis, &self.room, first).await;
        // Decided on the first read: messages arriving before the second read
        // must not turn a reset back into a (gapped) recovery.
        let forced = match (&snap, &self.resume) {
            (Ok(s), Some(r)) => reset_reason(r, s),
            _ => None,
        };
        if forced.is_some() {
            // The client's position is void: it gets a fresh join's history.
            snap = history::read(&self.state.redis, &self.room, on_join).await;
        }
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "history").increment(1);
                tracing::warn!(error = %e, "Cannot read history on join");
                return Err(CloseReason::Unavailable);
            }
        };
        let frame = join_frame(
            &snap,
            &self.room,
            self.resume.as_ref(),
            forced,
            cfg.history_on_join,
        );
        self.last_seq = snap.latest_seq;
        self.epoch = snap.epoch;
        if let Some(frames) = frame {
            self.send_all(frames).await.map_err(write_reason)?;
        }
        Ok(())
    }

    /// Sends one live message unless it is a repeat; fills a gap first.
    async fn deliver(&mut self, out: Outbound) -> Result<(), WriteError> {
        match out {
            Outbound::Message(m) => self.deliver_live(m).await,
            Outbound::Resync => self.fill_gap(u64::MAX).await,
        }
    }

    async fn deliver_live(&mut self, out: LiveMessage) -> Result<(), WriteError> {
        match &self.epoch {
            None => self.epoch = Some(out.epoch.to_string()),
            Some(e) if e.as_str() != &*out.epoch => return self.epoch_changed().await,
            Some(_) => {}
        }
        if out.seq <= self.last_seq {
            return Ok(());
        }
        if out.seq > self.last_seq + 1 {
            self.fill_gap(out.seq).await?;
        }
        self.last_seq = out.seq;
        self.feed(Message::Text(out.frame)).await
    }

    /// The room's sequence restarted (its state was lost, e.g. Redis was
    /// replaced): tell the client with a `history` frame marked
    /// `reset: "epoch_changed"` holding the new sequence's messages, and
    /// continue from there.
    async fn epoch_changed(&mut self) -> Result<(), WriteError> {
        let tail = Range::Tail(self.state.config.history_on_join.max(1));
        let snap = match history::read(&self.state.redis, &self.room, tail).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read history after an epoch change");
                return Ok(());
            }
        };
        tracing::info!(old = ?self.epoch, new = ?snap.epoch, "Room epoch changed");
        let mut meta = snap.meta(&self.room);
        meta.reset = Some("epoch_changed");
        let frames = history_frames(
            &meta,
            snap.records.iter().map(|(_, r)| r.as_str()),
            HISTORY_FRAME_BYTES,
        );
        self.last_seq = snap.latest_seq;
        self.epoch = snap.epoch;
        self.send_all(frames).await
    }

    /// Sends stored messages with `last_seq < seq < upto`.
    async fn fill_gap(&mut self, upto: u64) -> Result<(), WriteError> {
        let missed = Range::After(self.last_seq);
        let snap = match history::read(&self.state.redis, &self.room, missed).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, from = self.last_seq, upto, "Cannot fill delivery gap from history");
                return Ok(());
            }
        };
        match (&self.epoch, &snap.epoch) {
            (Some(ours), Some(now)) if ours != now => return self.epoch_changed().await,
            (None, Some(now)) => self.epoch = Some(now.clone()),
            _ => {}
        }
        tracing::debug!(
            from = self.last_seq,
            upto,
            "Filling delivery gap from history"
        );
        let missing: Vec<(u64, String)> = snap
            .records
            .into_iter()
            .filter(|(s, _)| *s > self.last_seq && *s < upto)
            .collect();
        for (seq, record) in missing {
            self.last_seq = seq;
            self.send(Message::Text(message_frame(&record).into()))
                .await?;
        }
        Ok(())
    }

    /// Writes several text frames, then flushes once.
    async fn send_all(&mut self, frames: Vec<String>) -> Result<(), WriteError> {
        for f in frames {
            self.feed(Message::Text(f.into())).await?;
        }
        self.flush().await
    }

    /// Writes one frame and flushes.
    async fn send(&mut self, msg: Message) -> Result<(), WriteError> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queues one frame in the socket's write buffer (written out when the
    /// buffer fills or on [`Self::flush`]).
    async fn feed(&mut self, msg: Message) -> Result<(), WriteError> {
        let timeout = self.state.config.write_timeout();
        let kick = self.kick.clone();
        bounded_write(timeout, &kick, self.socket.feed(msg)).await
    }

    /// Writes out everything queued.
    async fn flush(&mut self) -> Result<(), WriteError> {
        let timeout = self.state.config.write_timeout();
        let kick = self.kick.clone();
        bounded_write(timeout, &kick, self.socket.flush()).await
    }
}

/// Awaits a socket write, giving up when the client stalls past `timeout` or
/// is kicked as a slow consumer.
async fn bounded_write<F>(
    timeout: Duration,
    kick: &CancellationToken,
    write: F,
) -> Result<(), WriteError>
where
    F: Future<Output = Result<(), axum::Error>>,
{
    tokio::select! {
        // The write first: when it completes at once (the usual case), the
        // kick future is never polled and registers nothing.
        biased;
        r = tokio::time::timeout(timeout, write) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteError::Closed),
            Err(_) => {
                metrics::counter!(m::GW_SLOW_CONSUMERS).increment(1);
                Err(WriteError::Slow)
            }
        },
        _ = kick.cancelled() => Err(WriteError::Slow),
    }
}

fn write_reason(e: WriteError) -> CloseReason {
    match e {
        WriteError::Slow => CloseReason::SlowConsumer,
        WriteError::Closed => CloseReason::SocketError,
    }
}

/// Why a client's `since` (and `epoch`) cannot be honoured, if it cannot.
fn reset_reason(resume: &Resume, snap: &Snapshot) -> Option<&'static str> {
    let epoch_changed = matches!((&resume.epoch, &snap.epoch), (Some(theirs), Some(ours)) if theirs != ours)
        || (resume.epoch.is_some() && snap.epoch.is_none() && resume.since > 0);
    if epoch_changed {
        Some("epoch_changed")
    } else if resume.since > snap.latest_seq {
        Some("since_ahead")
    } else {
        None
    }
}

/// The history frame sent on join, or `None` when history on join is disabled
/// and the client is not recovering.
fn join_frame(
    snap: &Snapshot,
    room: &RoomId,
    resume: Option<&Resume>,
    forced: Option<&'static str>,
    on_join: usize,
) -> Option<Vec<String>> {
    let mut meta = snap.meta(room);
    let Some(resume) = resume else {
        if on_join == 0 {
            return None;
        }
        return Some(history_frames(
            &meta,
            snap.records.iter().map(|(_, r)| r.as_str()),
            HISTORY_FRAME_BYTES,
        ));
    };
    if let Some(reason) = forced.or_else(|| reset_reason(resume, snap)) {
        // The client's position belongs to a sequence that no longer exists:
        // tell it, and give it the recent history of the new one.
        meta.reset = Some(reason);
        let skip = snap.records.len().saturating_sub(on_join);
        return Some(history_frames(
            &meta,
            snap.records[skip..].iter().map(|(_, r)| r.as_str()),
            HISTORY_FRAME_BYTES,
        ));
    }
    let wanted = snap.records.iter().filter(|(s, _)| *s > resume.since);
    meta.truncated = snap.oldest_seq().is_some_and(|o| o > resume.since + 1)
        || (snap.held == 0 && snap.latest_seq > resume.since);
    Some(history_frames(
        &meta,
        wanted.map(|(_, r)| r.as_str()),
        HISTORY_FRAME_BYTES,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(range: std::ops::RangeInclusive<u64>, epoch: &str) -> Snapshot {
        Snapshot {
            records: range
                .clone()
                .map(|s| (s, format!("{{\"seq\":{s}}}")))
                .collect(),
            latest_seq: *range.end(),
            epoch: Some(epoch.into()),
            held: range.end() - range.start() + 1,
        }
    }

    fn join_frame_one(
        snap: &Snapshot,
        room: &RoomId,
        resume: Option<&Resume>,
        on_join: usize,
    ) -> Option<String> {
        join_frame(snap, room, resume, None, on_join).map(|f| {
            assert_eq!(f.len(), 1);
            f.into_iter().next().unwrap()
        })
    }

    fn seqs(frame: &str) -> (Vec<u64>, serde_json::Value) {
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        let s = v["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        (s, v["data"].clone())
    }

    #[test]
    fn recovery_sends_exactly_what_follows_since() {
        let room = RoomId::parse("r").unwrap();
        let r = Resume {
            since: 7,
            epoch: Some("e1".into()),
        };
        let (s, d) = seqs(&join_frame_one(&snap(5..=10, "e1"), &room, Some(&r), 2).unwrap());
        assert_eq!(s, [8, 9, 10]);
        assert!(d.get("truncated").is_none());
        let r = Resume {
            since: 2,
            epoch: None,
        };
        let (s, d) = seqs(&join_frame_one(&snap(5..=10, "e1"), &room, Some(&r), 2).unwrap());
        assert_eq!(s, [5, 6, 7, 8, 9, 10]);
        assert_eq!(d["truncated"], true);
    }

    #[test]
    fn stale_epoch_is_reported() {
        let room = RoomId::parse("r").unwrap();
        let r = Resume {
            since: 7,
            epoch: Some("old".into()),
        };
        let (s, d) = seqs(&join_frame_one(&snap(1..=3, "new"), &room, Some(&r), 2).unwrap());
        assert_eq!(d["reset"], "epoch_changed");
        assert_eq!(s, [2, 3]);
        let r = Resume {
            since: 70,
            epoch: None,
        };
        let (_, d) = seqs(&join_frame_one(&snap(1..=3, "new"), &room, Some(&r), 2).unwrap());
        assert_eq!(d["reset"], "since_ahead");
    }

    #[test]
    fn a_reset_decided_on_the_first_read_stands() {
        // The first read found `since` ahead; by the second, the room caught up.
        let room = RoomId::parse("r").unwrap();
        let r = Resume {
            since: 7,
            epoch: Some("e".into()),
        };
        let frames =
            join_frame(&snap(5..=10, "e"), &room, Some(&r), Some("since_ahead"), 50).unwrap();
        let (s, d) = seqs(&frames[0]);
        assert_eq!(d["reset"], "since_ahead");
        assert_eq!(
            s,
            [5, 6, 7, 8, 9, 10],
            "the whole tail, not just what follows since"
        );
    }

    #[test]
    fn plain_join_sends_tail_or_nothing() {
        let room = RoomId::parse("r").unwrap();
        let (s, _) = seqs(&join_frame_one(&snap(1..=3, "e"), &room, None, 50).unwrap());
        assert_eq!(s, [1, 2, 3]);
        assert!(join_frame(&snap(1..=3, "e"), &room, None, None, 0).is_none());
    }
}
