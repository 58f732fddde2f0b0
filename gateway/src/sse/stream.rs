//! The plumbing between a connection's writer and hyper's response body.
//!
//! The writer writes WebSocket messages to a sink, as [`SseFrame`]s: text
//! frames as events with their id (a live message's event is encoded once
//! for every `/sse` member of its room), pings as the `: keepalive` comment,
//! the close as a last comment. [`SseSink`] puts them in a small bounded
//! channel that the response body ([`SseBody`]) drains as hyper writes. A
//! client that stops reading fills the socket, then hyper's buffer, then the
//! channel: the writer's next write waits, and after `WRITE_TIMEOUT_MS` (or
//! a full connection queue) the connection ends as a slow consumer, exactly
//! as on `/ws`. [`SseBody::kill`] then ends the body with an error, so hyper
//! drops the socket (reset, through the connection's abort switch) instead of
//! holding what is queued for a client that does not read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard, PollSender, WaitForCancellationFutureOwned};

use super::frame;
use crate::delivery::registry::LiveMessage;
use crate::ws::outgoing::Outgoing;

/// Events buffered between the writer and the body (hyper buffers more).
pub(crate) const EVENT_BUFFER: usize = 16;

/// One frame of the writer as the bytes of an event; `None` for what SSE
/// does not carry (binary frames, pongs: never written).
#[derive(Debug)]
pub(crate) struct SseFrame(Option<Bytes>);

impl From<Message> for SseFrame {
    fn from(message: Message) -> Self {
        Self(match message {
            Message::Text(text) => Some(frame::event(text.as_str())),
            Message::Ping(_) => Some(frame::KEEPALIVE),
            Message::Close(close) => {
                let why = close.map_or_else(String::new, |c| format!(" {} {}", c.code, c.reason));
                Some(frame::comment(&format!("close{why}")))
            }
            Message::Binary(_) | Message::Pong(_) => None,
        })
    }
}

impl Outgoing for SseFrame {
    fn live(live: &LiveMessage) -> Self {
        Self(Some(frame::live(live)))
    }
}

/// The writer's sink on an SSE connection.
#[derive(Debug)]
pub(crate) struct SseSink {
    events: PollSender<Bytes>,
}

impl SseSink {
    /// A sink feeding `events`.
    pub(crate) fn new(events: mpsc::Sender<Bytes>) -> Self {
        Self {
            events: PollSender::new(events),
        }
    }
}

fn gone<E: std::error::Error + Send + Sync + 'static>(e: E) -> axum::Error {
    axum::Error::new(e)
}

impl Sink<SseFrame> for SseSink {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.events.poll_reserve(cx).map_err(gone)
    }

    fn start_send(mut self: Pin<&mut Self>, item: SseFrame) -> Result<(), Self::Error> {
        let SseFrame(Some(event)) = item else {
            // Nothing to write; the reserved slot is given back.
            self.events.abort_send();
            return Ok(());
        };
        self.events.send_item(event).map_err(gone)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The channel is the buffer; hyper writes as it drains it.
        Poll::Ready(Ok(()))
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<(), Self::Error>> {
        self.events.close();
        Poll::Ready(Ok(()))
    }
}

/// The response body: the events, until the writer is done or the
/// connection is killed. Dropping it (hyper does once the response is
/// written or the client has gone) fires the `done` token.
#[derive(Debug)]
pub(crate) struct SseBody {
    events: mpsc::Receiver<Bytes>,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
    _done: DropGuard,
}

impl SseBody {
    /// A body of `events`, ended with an error when `kill` fires; `done`
    /// fires when it is dropped.
    pub(crate) fn new(
        events: mpsc::Receiver<Bytes>,
        kill: CancellationToken,
        done: CancellationToken,
    ) -> Self {
        Self {
            events,
            killed: Box::pin(kill.cancelled_owned()),
            dead: false,
            _done: done.drop_guard(),
        }
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.dead {
            return Poll::Ready(None);
        }
        if self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
            let cut = std::io::Error::other("connection cut off (slow consumer)");
            return Poll::Ready(Some(Err(cut)));
        }
        self.events.poll_recv(cx).map(|e| e.map(Ok))
    }
}

/// The reader's inbound stream on an SSE connection: the client sends
/// nothing here (it posts over HTTP), so this yields a pong every `every`
/// while the response body lives (the idle timeout is for clients that
/// vanish; a client that stops reading is a slow consumer instead) and ends
/// once it is dropped (the client has gone).
pub(crate) fn inbound(
    done: CancellationToken,
    every: Duration,
) -> Pin<Box<dyn Stream<Item = Result<Message, axum::Error>> + Send>> {
    Box::pin(futures_util::stream::unfold(done, move |done| async move {
        tokio::select! {
            () = done.cancelled() => None,
            () = tokio::time::sleep(every) => Some((Ok(Message::Pong(Default::default())), done)),
        }
    }))
}
