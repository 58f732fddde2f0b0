//! The plumbing between a connection's writer and hyper's response body.
//!
//! The writer writes WebSocket messages to a sink; [`SseSink`] turns them
//! into events (text frames as `data:` with their id, pings as the
//! `: keepalive` comment, the close as a last comment) in a small bounded
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

use axum::extract::ws::Message;
use axum::response::sse::Event;
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard, PollSender, WaitForCancellationFutureOwned};

use super::frame;

/// Events buffered between the writer and the body (hyper buffers more).
pub(crate) const EVENT_BUFFER: usize = 16;

/// The writer's sink on an SSE connection.
#[derive(Debug)]
pub(crate) struct SseSink {
    events: PollSender<Event>,
}

impl SseSink {
    /// A sink feeding `events`.
    pub(crate) fn new(events: mpsc::Sender<Event>) -> Self {
        Self {
            events: PollSender::new(events),
        }
    }
}

fn gone<E: std::error::Error + Send + Sync + 'static>(e: E) -> axum::Error {
    axum::Error::new(e)
}

impl Sink<Message> for SseSink {
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.events.poll_reserve(cx).map_err(gone)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let event = match item {
            Message::Text(text) => frame::event(text.as_str()),
            Message::Ping(_) => Event::default().comment(frame::KEEPALIVE),
            Message::Close(close) => {
                let why = close.map_or_else(String::new, |c| format!(" {} {}", c.code, c.reason));
                Event::default().comment(format!("close{}", why.replace(['\n', '\r'], " ")))
            }
            // Nothing else is ever written; the reserved slot is given back.
            Message::Binary(_) | Message::Pong(_) => {
                self.events.abort_send();
                return Ok(());
            }
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
    events: mpsc::Receiver<Event>,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
    _done: DropGuard,
}

impl SseBody {
    /// A body of `events`, ended with an error when `kill` fires; `done`
    /// fires when it is dropped.
    pub(crate) fn new(
        events: mpsc::Receiver<Event>,
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
    type Item = Result<Event, std::io::Error>;

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
