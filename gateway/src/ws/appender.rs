//! Pipelined appends of one connection: the reader keeps reading while the
//! messages it has read are being stored.
//!
//! A connection's first message starts its appender, a task of its own
//! (idle connections never have one). The reader hands it, in the order
//! read, the messages to append, the refusals of messages it checked, and
//! every reply it owes the client; the appender answers all of them in that
//! order:
//! - Consecutive messages form a batch of up to `APPEND_PIPELINE_DEPTH`,
//!   stored in one round trip and one script call ([`append::append_batch`]).
//!   While a batch is out, the reader goes on reading and queueing; once the
//!   queue holds `APPEND_PIPELINE_DEPTH` messages it waits (TCP slows the
//!   sender; nothing is buffered beyond that).
//! - Only one batch is out at a time, so the stored order is the order read.
//!   Acks (and errors) are queued to the writer in the order read.
//! - **Send order after a refusal** (DESIGN.md). When a message (or room
//!   event) with `client_id` C is refused `unavailable` — Redis error or
//!   timeout, backlog full, replicas too slow, or a check of the reader that
//!   could not reach Redis — every later one of the connection is refused
//!   `unavailable` without being tried, until a frame with `client_id` C
//!   arrives again ([`SendOrder`]). "Later" is in reading order, so it
//!   covers the rest of the batch, the messages already queued, those still
//!   inside the reader's Redis checks and those still in the socket: all of
//!   them were sent before the client learnt of the refusal, and storing one
//!   would put it before C's resend. A client that resends from C onward, in
//!   order and with the same `client_id`s, stores each message once, in its
//!   sending order. When the refused message has no `client_id` (nothing
//!   can close a window), what is queued behind it is refused, as before.
//! - A message the pre-publish hook rejects (`rejected`, see
//!   `delivery::screen`) is final for itself alone and opens no window; a
//!   hook that fails closed refuses `unavailable` like Redis does.
//!
//! On close or shutdown the appender finishes what it holds before the
//! reader's end marker is queued: a message that was stored is acked.

use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use chat_shared::protocol::{ack_frame, error_frame, ErrorCode, ProtocolError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::delivery::append::{self, AppendError, Draft};
use crate::delivery::queue;
use crate::delivery::registry::Outbound;
use crate::state::AppState;

/// One thing the reader owes the client, in reading order.
#[derive(Debug)]
enum Job {
    /// A message or room event to store, then ack.
    Append(Draft),
    /// A message or room event the reader refused after its own checks:
    /// answered in its place, under the send-order rule.
    Refuse {
        error: ProtocolError,
        client_id: Option<String>,
    },
    /// A reply (an error, a history page) to queue once everything before
    /// it is answered.
    Reply(String),
}

/// The handle the reader keeps: queue jobs, then finish.
#[derive(Debug)]
pub(super) struct Appender {
    jobs: mpsc::Sender<Job>,
    task: JoinHandle<()>,
}

/// The appender task has ended (the runtime is shutting down).
#[derive(Debug)]
pub(super) struct AppenderGone;

impl Appender {
    /// Starts the appender of a connection to `room` whose replies go to
    /// `replies`.
    pub(super) fn spawn(state: AppState, room: RoomId, replies: queue::Sender<Outbound>) -> Self {
        let depth = state.config.append_pipeline_depth.clamp(1, 1024) as usize;
        let (jobs, rx) = mpsc::channel(depth);
        let task = tokio::spawn(run(state, room, rx, replies, depth));
        Self { jobs, task }
    }

    /// Queues a message to store; waits while `APPEND_PIPELINE_DEPTH` jobs
    /// are queued.
    pub(super) async fn append(&self, draft: Draft) -> Result<(), AppenderGone> {
        self.send(Job::Append(draft)).await
    }

    /// Queues the refusal of a message (or room event) the reader checked:
    /// it takes its place in the send order (an `unavailable` one opens a
    /// window, and one inside a window is answered `unavailable`).
    pub(super) async fn refuse(
        &self,
        error: ProtocolError,
        client_id: Option<String>,
    ) -> Result<(), AppenderGone> {
        self.send(Job::Refuse { error, client_id }).await
    }

    /// Queues a reply behind everything queued before it.
    pub(super) async fn reply(&self, frame: String) -> Result<(), AppenderGone> {
        self.send(Job::Reply(frame)).await
    }

    async fn send(&self, job: Job) -> Result<(), AppenderGone> {
        self.jobs.send(job).await.map_err(|_| AppenderGone)
    }

    /// Stores and answers everything queued, then ends the task.
    pub(super) async fn finish(self) {
        drop(self.jobs);
        let _ = self.task.await;
    }
}

/// The send-order rule of DESIGN.md: once a message with `client_id` C is
/// refused `unavailable`, every later message of the connection is refused
/// `unavailable` until one with `client_id` C arrives again.
#[derive(Debug, Default)]
struct SendOrder {
    /// The `client_id` whose return closes the window; `None`: no window.
    awaiting: Option<String>,
}

impl SendOrder {
    /// Whether a message with `client_id`, next in reading order, may be
    /// tried (or keep the refusal the reader gave it). The awaited
    /// `client_id` closes the window.
    fn admits(&mut self, client_id: Option<&str>) -> bool {
        match &self.awaiting {
            None => true,
            Some(awaited) if client_id == Some(awaited.as_str()) => {
                self.awaiting = None;
                true
            }
            Some(_) => false,
        }
    }

    /// A message with `client_id` was refused `unavailable`: a window opens,
    /// unless one is open already (it waits for the first refused one).
    fn refused(&mut self, client_id: Option<&str>) {
        if self.awaiting.is_none() {
            self.awaiting = client_id.map(str::to_owned);
        }
    }

    /// Whether a window is open.
    fn is_open(&self) -> bool {
        self.awaiting.is_some()
    }
}

/// The task: answers jobs in order, storing consecutive messages as batches.
async fn run(
    state: AppState,
    room: RoomId,
    mut jobs: mpsc::Receiver<Job>,
    replies: queue::Sender<Outbound>,
    depth: usize,
) {
    let limits = state.config.append_limits();
    let mut order = SendOrder::default();
    // A job that ended the last batch: it is answered before anything later.
    let mut held: Option<Job> = None;
    loop {
        let job = match held.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                None => return,
                Some(job) => job,
            },
        };
        let first = match job {
            Job::Append(draft) if order.admits(draft.client_id.as_deref()) => draft,
            other => {
                answer_unstored(&replies, &mut order, other, false).await;
                continue;
            }
        };
        // Everything else already queued joins the batch, up to a reply or
        // a refusal. No window is open: the first message was admitted.
        let mut batch = vec![first];
        while batch.len() < depth {
            match jobs.try_recv() {
                Ok(Job::Append(draft)) => batch.push(draft),
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let client_ids: Vec<Option<String>> = batch.iter().map(|d| d.client_id.clone()).collect();
        let hook = state.publish_hook.as_ref();
        let results = append::append_batch(&state.redis, limits, hook, &room, batch).await;
        let mut failed = false;
        for (client_id, result) in client_ids.iter().zip(results) {
            let client_id = client_id.as_deref();
            match result {
                Ok(done) => {
                    metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => "accepted").increment(1);
                    reply(&replies, ack_frame(client_id, &done.id, &done.timestamp)).await;
                }
                // A hook's rejection is final for that message alone: it
                // opens no send-order window. Inside one (an earlier message
                // of the batch failed) it is refused like the rest.
                Err(AppendError::Rejected(_)) if order.is_open() => {
                    refuse(&replies, AppendError::AfterFailure, client_id).await;
                }
                Err(e @ AppendError::Rejected(_)) => refuse(&replies, e, client_id).await,
                Err(e) => {
                    failed = true;
                    order.refused(client_id);
                    refuse(&replies, e, client_id).await;
                }
            }
        }
        if failed && !order.is_open() {
            // Only messages without a client_id failed: no window can
            // close, so refuse just the messages queued behind the failure
            // (replies keep their place; the held job came first).
            if let Some(job) = held.take() {
                answer_unstored(&replies, &mut order, job, true).await;
            }
            while let Ok(job) = jobs.try_recv() {
                answer_unstored(&replies, &mut order, job, true).await;
            }
        }
    }
}

/// Answers a job without storing anything: a reply goes out, a refusal of
/// the reader keeps its code unless a window turns it into `unavailable`,
/// and a message is refused (it is inside a window, or `after_failure`).
async fn answer_unstored(
    replies: &queue::Sender<Outbound>,
    order: &mut SendOrder,
    job: Job,
    after_failure: bool,
) {
    match job {
        Job::Reply(frame) => reply(replies, frame).await,
        Job::Refuse { error, client_id } => {
            let client_id = client_id.as_deref();
            let error = if order.admits(client_id) && !after_failure {
                error
            } else {
                ProtocolError::new(
                    ErrorCode::Unavailable,
                    AppendError::AfterFailure.client_message(),
                )
            };
            if error.code == ErrorCode::Unavailable {
                order.refused(client_id);
            }
            metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => error.code.as_str()).increment(1);
            reply(replies, error_frame(&error, client_id)).await;
        }
        Job::Append(draft) => {
            let client_id = draft.client_id.as_deref();
            // Not admitted (or behind a failure): refused, and a window
            // opens on it if none is open.
            order.refused(client_id);
            refuse(replies, AppendError::AfterFailure, client_id).await;
        }
    }
}

/// Tells the sender its message was not stored (or not acknowledged).
async fn refuse(replies: &queue::Sender<Outbound>, e: AppendError, client_id: Option<&str>) {
    let err = e.to_protocol();
    metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => err.code.as_str()).increment(1);
    reply(replies, error_frame(&err, client_id)).await;
}

/// Queues a frame for the writer; if the writer is gone the connection is
/// ending and the answer has no one to go to (what is held is still stored).
async fn reply(replies: &queue::Sender<Outbound>, frame: String) {
    let _ = replies.send(Outbound::Reply(Box::new(frame.into()))).await;
}

#[cfg(test)]
mod tests {
    use super::SendOrder;

    #[test]
    fn a_refusal_opens_a_window_that_only_its_client_id_closes() {
        let mut order = SendOrder::default();
        assert!(order.admits(Some("a")));
        order.refused(Some("b"));
        // Later refusals do not move the window: it waits for the first.
        order.refused(Some("c"));
        assert!(!order.admits(Some("c")));
        assert!(
            !order.admits(None),
            "frames without client_id are refused too"
        );
        assert!(!order.admits(Some("d")));
        assert!(order.admits(Some("b")), "b's return closes the window");
        assert!(order.admits(Some("c")));
        assert!(order.admits(None));
    }

    #[test]
    fn a_refusal_without_client_id_opens_no_window() {
        let mut order = SendOrder::default();
        order.refused(None);
        assert!(!order.is_open());
        assert!(order.admits(Some("x")));
    }
}
