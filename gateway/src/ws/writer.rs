//! The writing half of a connection: the only place that writes to the
//! socket.
//!
//! It drains the connection's bounded queue — live deliveries from the local
//! registry and replies (acks, errors, history pages) from the reader — and
//! sends pings. Ephemeral frames (join, leave, typing, read) have no `seq`
//! and are written as they come.
//! Every live delivery passes the [`Cursor`]: repeats are dropped, and a gap is
//! filled from history before the message behind it is sent. A gap that cannot
//! be filled (Redis failing on every retry) closes the connection with 1011, so
//! the client reconnects with `since` instead of silently missing messages.
//! A write that stalls past `WRITE_TIMEOUT_MS`, or a kick from the registry
//! (its queue overflowed), ends the connection as a slow consumer.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use chat_shared::protocol::live_frame;
use futures_util::{Sink, SinkExt};
use tokio_util::sync::CancellationToken;

use super::close::CloseReason;
use super::cursor::{Cursor, Step};
use super::outgoing::Outgoing;
use super::recovery::{self, HistorySource};
use crate::delivery::queue;
use crate::delivery::registry::{LiveMessage, Outbound};
use crate::rooms::history::Range;

/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Timing and sizing of a writer.
#[derive(Debug, Clone, Copy)]
pub(super) struct WriterLimits {
    /// Longest a single write may wait for socket space.
    pub(super) write_timeout: Duration,
    /// How often to ping the client.
    pub(super) ping_interval: Duration,
    /// How many messages a reset's `history` frame carries.
    pub(super) reset_tail: usize,
}

/// The outbound half of one connection.
#[derive(Debug)]
pub(super) struct Writer<H> {
    room: RoomId,
    history: H,
    cursor: Cursor,
    outbound: queue::Receiver<Outbound>,
    kick: CancellationToken,
    limits: WriterLimits,
}

impl<H: HistorySource> Writer<H> {
    /// A writer starting at `cursor` (where the join history left the client).
    pub(super) fn new(
        room: RoomId,
        history: H,
        cursor: Cursor,
        outbound: queue::Receiver<Outbound>,
        kick: CancellationToken,
        limits: WriterLimits,
    ) -> Self {
        Self {
            room,
            history,
            cursor,
            outbound,
            kick,
            limits,
        }
    }

    /// Writes until the reader's end marker, with everything queued before it
    /// written (`Ok`), or until writing fails (`Err` with the reason to close).
    pub(super) async fn run<S, E, M>(&mut self, sink: &mut S) -> Result<(), CloseReason>
    where
        S: Sink<M, Error = E> + Unpin,
        M: Outgoing,
    {
        let mut ping = tokio::time::interval(self.limits.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // Created once: a cancellation future registers a waiter when first
        // polled, which per loop turn would cost a lock round trip.
        let kicked = self.kick.clone().cancelled_owned();
        tokio::pin!(kicked);
        loop {
            tokio::select! {
                biased;
                _ = &mut kicked => return Err(CloseReason::SlowConsumer),
                out = self.outbound.recv() => {
                    // The registry holds a sender until this connection
                    // leaves it, so `None` cannot happen while serving; treat
                    // it as a shutdown if it ever does.
                    let Some(out) = out else { return Err(CloseReason::Shutdown) };
                    // Write what is already queued in one go and flush once:
                    // one syscall per burst instead of one per message.
                    let mut done = self.deliver(sink, out).await?;
                    let mut batch = 1;
                    while !done && batch < WRITE_BATCH {
                        let Ok(more) = self.outbound.try_recv() else { break };
                        done = self.deliver(sink, more).await?;
                        batch += 1;
                    }
                    self.flush(sink).await?;
                    if done {
                        // The reader has ended and all it queued is written.
                        return Ok(());
                    }
                }
                _ = ping.tick() => {
                    self.feed(sink, M::from(Message::Ping(Default::default()))).await?;
                    self.flush(sink).await?;
                }
            }
        }
    }

    /// Writes one queued item: a live message unless it is a repeat (a gap
    /// is filled first), a catch-up, or a reply. Returns `true` at the
    /// reader's end marker.
    async fn deliver<S, E, M>(&mut self, sink: &mut S, out: Outbound) -> Result<bool, CloseReason>
    where
        S: Sink<M, Error = E> + Unpin,
        M: Outgoing,
    {
        match out {
            Outbound::Message(live) => self.deliver_live(sink, live).await?,
            Outbound::Resync => Box::pin(self.fill_gap(sink, u64::MAX)).await?,
            Outbound::Reply(frame) => self.feed(sink, M::from(Message::Text(*frame))).await?,
            // No `seq`: written as-is, outside the cursor.
            Outbound::Ephemeral(frame) => {
                let text = Arc::unwrap_or_clone(frame);
                self.feed(sink, M::from(Message::Text(text))).await?
            }
            Outbound::ReaderDone => return Ok(true),
            Outbound::Banned => return Err(CloseReason::Banned),
        }
        Ok(false)
    }

    async fn deliver_live<S, E, M>(
        &mut self,
        sink: &mut S,
        live: Arc<LiveMessage>,
    ) -> Result<(), CloseReason>
    where
        S: Sink<M, Error = E> + Unpin,
        M: Outgoing,
    {
        match self.cursor.on_live(live.seq, &live.epoch) {
            Step::Send => self.feed(sink, M::live(&live)).await,
            Step::Skip => Ok(()),
            // The rare paths read Redis: boxed, so that every idle connection
            // does not carry the size of a Redis call in its state.
            Step::Reset => Box::pin(self.reset(sink)).await,
            Step::FillGap => {
                Box::pin(self.fill_gap(sink, live.seq)).await?;
                match self.cursor.on_live(live.seq, &live.epoch) {
                    Step::Send => self.feed(sink, M::live(&live)).await,
                    Step::Skip | Step::Reset => Ok(()),
                    Step::FillGap => {
                        // History no longer holds the missing messages (they
                        // were trimmed): nothing can fill the gap.
                        tracing::warn!(
                            from = self.cursor.last_seq(),
                            to = live.seq,
                            "Missed messages were trimmed from history; delivering past them"
                        );
                        metrics::counter!(m::GW_GAPS_TRIMMED).increment(1);
                        self.cursor.skip_to(live.seq);
                        self.feed(sink, M::live(&live)).await
                    }
                }
            }
        }
    }

    /// Sends stored messages with `last_seq < seq < upto`; on an epoch
    /// change, resets the client instead.
    async fn fill_gap<S, E, M>(&mut self, sink: &mut S, upto: u64) -> Result<(), CloseReason>
    where
        S: Sink<M, Error = E> + Unpin,
        M: Outgoing,
    {
        let from = self.cursor.last_seq();
        let snap = match recovery::read_with_retry(&self.history, Range::After(from)).await {
            Ok(snap) => snap,
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "gap_fill").increment(1);
                tracing::warn!(error = %e, from, "Cannot fill a delivery gap from history; closing so the client recovers with since");
                return Err(CloseReason::GapUnfilled);
            }
        };
        if !self.cursor.same_epoch(snap.epoch.as_deref()) {
            return Box::pin(self.reset(sink)).await;
        }
        if recovery::gap_trimmed(&snap, from) {
            // The gap reaches below what history still holds: the client
            // gets what is left after it in a `history` frame marked
            // `truncated`, as `since` recovery would say, never a silent
            // jump in `seq`.
            tracing::warn!(from, upto, "Missed messages were trimmed from history; sending what is left as a truncated history");
            metrics::counter!(m::GW_GAPS_TRIMMED).increment(1);
            let left: Vec<&(u64, String)> = snap
                .records
                .iter()
                .filter(|(seq, _)| *seq > from && *seq < upto)
                .collect();
            let newest = left.last().map_or(0, |(seq, _)| *seq);
            let frames =
                recovery::truncated_frames(&snap, &self.room, left.iter().map(|(_, r)| r.as_str()));
            // Everything below `upto` is now either sent or gone.
            self.cursor
                .skip_to(newest.max(upto.saturating_sub(1).min(snap.latest_seq)));
            for f in frames {
                self.feed(sink, M::from(Message::Text(f.into()))).await?;
            }
            return Ok(());
        }
        tracing::debug!(from, upto, "Filling delivery gap from history");
        for (seq, record) in &snap.records {
            if !self.cursor.fill(*seq, upto) {
                continue;
            }
            if let Some(frame) = live_frame(record) {
                self.feed(sink, M::from(Message::Text(frame.into())))
                    .await?;
            }
        }
        Ok(())
    }

    /// The room's sequence restarted (its state was lost, e.g. Redis was
    /// replaced): send a `history` frame marked `reset: "epoch_changed"` with
    /// the new sequence's messages, and continue from there.
    async fn reset<S, E, M>(&mut self, sink: &mut S) -> Result<(), CloseReason>
    where
        S: Sink<M, Error = E> + Unpin,
        M: Outgoing,
    {
        let tail = Range::Tail(self.limits.reset_tail.max(1));
        let snap = match recovery::read_with_retry(&self.history, tail).await {
            Ok(snap) => snap,
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "reset").increment(1);
                tracing::warn!(error = %e, "Cannot read history after an epoch change; closing so the client recovers");
                return Err(CloseReason::GapUnfilled);
            }
        };
        tracing::info!(old = ?self.cursor.epoch(), new = ?snap.epoch, "Room epoch changed");
        let frames = recovery::reset_frames(&snap, &self.room);
        self.cursor.reset(snap.latest_seq, snap.epoch);
        for f in frames {
            self.feed(sink, M::from(Message::Text(f.into()))).await?;
        }
        Ok(())
    }

    /// Queues one frame in the socket's write buffer (written out when the
    /// buffer fills or on [`Self::flush`]).
    ///
    /// Usually the buffer takes the frame at once. Only then does the wait
    /// (with its timer and kick future) run, boxed: its size would otherwise
    /// be part of every connection's writer, idle or not.
    async fn feed<S, E, M>(&self, sink: &mut S, msg: M) -> Result<(), CloseReason>
    where
        S: Sink<M, Error = E> + Unpin,
        M: Outgoing,
    {
        match poll_once(|cx| sink.poll_ready_unpin(cx)).await {
            Poll::Ready(Ok(())) => sink
                .start_send_unpin(msg)
                .map_err(|_| CloseReason::SocketError),
            Poll::Ready(Err(_)) => Err(CloseReason::SocketError),
            Poll::Pending => {
                let fed = sink.feed(msg);
                Box::pin(bounded_write(self.limits.write_timeout, &self.kick, fed)).await
            }
        }
    }

    /// Writes out everything queued; waits (boxed) only when the socket
    /// does not take it at once, as [`Self::feed`].
    async fn flush<S, E, M>(&self, sink: &mut S) -> Result<(), CloseReason>
    where
        S: Sink<M, Error = E> + Unpin,
        M: Outgoing,
    {
        match poll_once(|cx| sink.poll_flush_unpin(cx)).await {
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(_)) => Err(CloseReason::SocketError),
            Poll::Pending => {
                let flushed = sink.flush();
                Box::pin(bounded_write(
                    self.limits.write_timeout,
                    &self.kick,
                    flushed,
                ))
                .await
            }
        }
    }
}

/// Polls `poll` once and returns what it gave, ready or not.
async fn poll_once<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await
}

/// Awaits a socket write, giving up when the client stalls past `timeout` or
/// is kicked as a slow consumer.
pub(super) async fn bounded_write<F, E>(
    timeout: Duration,
    kick: &CancellationToken,
    write: F,
) -> Result<(), CloseReason>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    tokio::select! {
        // The write first: when it completes at once (the usual case), the
        // kick future is never polled and registers nothing.
        biased;
        r = tokio::time::timeout(timeout, write) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseReason::SocketError),
            Err(_) => {
                metrics::counter!(m::GW_SLOW_CONSUMERS).increment(1);
                Err(CloseReason::SlowConsumer)
            }
        },
        _ = kick.cancelled() => Err(CloseReason::SlowConsumer),
    }
}

#[cfg(test)]
mod tests;
