//! Pipelined appends of one connection: the reader keeps reading while the
//! messages it has read are being stored.
//!
//! A connection's first message starts its appender, a task of its own
//! (idle connections never have one). The reader hands it, in the order
//! read, the messages to append and every reply it owes the client; the
//! appender answers all of them in that order:
//! - Consecutive messages form a batch of up to `APPEND_PIPELINE_DEPTH`,
//!   stored in one round trip and one script call ([`append::append_batch`]).
//!   While a batch is out, the reader goes on reading and queueing; once the
//!   queue holds `APPEND_PIPELINE_DEPTH` messages it waits (TCP slows the
//!   sender; nothing is buffered beyond that).
//! - Only one batch is out at a time, so the stored order is the order read.
//!   Acks (and errors) are queued to the writer in the order read.
//! - **After a failure.** When a message is not stored (Redis error or
//!   timeout, backlog full), the messages behind it that the appender
//!   already holds — the rest of its batch and everything queued — are
//!   refused too, each with `unavailable`, without being tried. So every
//!   message acked after a failure was read after the failure was answered,
//!   and a client that resends from its first unacked message, with the
//!   same `client_id`s, stores each message once, in its sending order.
//!
//! On close or shutdown the appender finishes what it holds before the
//! reader's end marker is queued: a message that was stored is acked.

use chat_shared::ids::RoomId;
use chat_shared::metrics as m;
use chat_shared::protocol::{ack_frame, error_frame, ErrorCode, ProtocolError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::append::{self, AppendError, Draft};
use crate::queue;
use crate::rooms::Outbound;
use crate::state::AppState;

/// One thing the reader owes the client, in reading order.
#[derive(Debug)]
enum Job {
    /// A message or room event to store, then ack.
    Append(Draft),
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
        self.jobs
            .send(Job::Append(draft))
            .await
            .map_err(|_| AppenderGone)
    }

    /// Queues a reply behind everything queued before it.
    pub(super) async fn reply(&self, frame: String) -> Result<(), AppenderGone> {
        self.jobs
            .send(Job::Reply(frame))
            .await
            .map_err(|_| AppenderGone)
    }

    /// Stores and answers everything queued, then ends the task.
    pub(super) async fn finish(self) {
        drop(self.jobs);
        let _ = self.task.await;
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
    // A reply that ended the last batch: it goes out before anything later.
    let mut held: Option<String> = None;
    loop {
        if let Some(frame) = held.take() {
            reply(&replies, frame).await;
        }
        let first = match jobs.recv().await {
            None => return,
            Some(Job::Reply(frame)) => {
                reply(&replies, frame).await;
                continue;
            }
            Some(Job::Append(draft)) => draft,
        };
        // Everything else already queued joins the batch, up to a reply.
        let mut batch = vec![first];
        while batch.len() < depth {
            match jobs.try_recv() {
                Ok(Job::Append(draft)) => batch.push(draft),
                Ok(Job::Reply(frame)) => {
                    held = Some(frame);
                    break;
                }
                Err(_) => break,
            }
        }
        let client_ids: Vec<Option<String>> = batch.iter().map(|d| d.client_id.clone()).collect();
        let results = append::append_batch(&state.redis, limits, &room, batch).await;
        let mut failed = false;
        for (client_id, result) in client_ids.iter().zip(results) {
            let client_id = client_id.as_deref();
            match result {
                Ok(done) => {
                    metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => "accepted").increment(1);
                    reply(&replies, ack_frame(client_id, &done.id, &done.timestamp)).await;
                }
                Err(e) => {
                    failed = true;
                    refuse(&replies, e, client_id).await;
                }
            }
        }
        if failed {
            // Refuse the messages queued behind the failure; replies keep
            // their place (the held one came first).
            if let Some(frame) = held.take() {
                reply(&replies, frame).await;
            }
            while let Ok(job) = jobs.try_recv() {
                match job {
                    Job::Append(draft) => {
                        refuse(
                            &replies,
                            AppendError::AfterFailure,
                            draft.client_id.as_deref(),
                        )
                        .await;
                    }
                    Job::Reply(frame) => reply(&replies, frame).await,
                }
            }
        }
    }
}

/// Tells the sender its message was not stored (or not acknowledged).
async fn refuse(replies: &queue::Sender<Outbound>, e: AppendError, client_id: Option<&str>) {
    let err = ProtocolError::new(ErrorCode::Unavailable, e.client_message());
    metrics::counter!(m::GW_FRAMES_RECEIVED, "result" => err.code.as_str()).increment(1);
    reply(replies, error_frame(&err, client_id)).await;
}

/// Queues a frame for the writer; if the writer is gone the connection is
/// ending and the answer has no one to go to (what is held is still stored).
async fn reply(replies: &queue::Sender<Outbound>, frame: String) {
    let _ = replies.send(Outbound::Reply(Box::new(frame.into()))).await;
}
