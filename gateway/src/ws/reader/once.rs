//! One client frame outside any connection: what `POST
//! /rooms/{room}/messages` (with a token or session) and `POST
//! /rooms/{room}/events` run. The frame goes through the same [`Reader`]
//! handlers as a WebSocket frame (validation, budgets, checks, the appender
//! and its acks), and the replies it queues are collected instead of
//! written to a socket.

use std::net::IpAddr;

use chat_shared::ids::{RoomId, Username};

use super::Reader;
use crate::delivery::queue;
use crate::delivery::registry::Outbound;
use crate::edge::auth::Identity;
use crate::state::AppState;

/// Replies queued at once before the collector takes them (history pages
/// can be several frames; the reader waits while the queue is full).
const REPLY_QUEUE: usize = 64;

/// Who sends a one-off frame.
#[derive(Debug)]
pub(crate) struct OneShot {
    /// The room the frame is for.
    pub(crate) room: RoomId,
    /// The display name of a sender without a token.
    pub(crate) username: Username,
    /// The verified user (authentication on).
    pub(crate) identity: Option<Identity>,
    /// The user id without a token: `anon-…` or `api:<name>`.
    pub(crate) user_id: Option<String>,
    /// The client IP (the anonymous budgets' key).
    pub(crate) client_ip: IpAddr,
}

impl Reader {
    /// Handles the client frame `text` as a connection's reader would and
    /// returns every frame `/ws` would have sent back, in order (none for
    /// `typing` and `read`).
    pub(crate) async fn answer_once(state: AppState, who: OneShot, text: &str) -> Vec<String> {
        let (tx, mut rx) = queue::channel(REPLY_QUEUE);
        let mut reader = Reader::new(
            state,
            who.room,
            who.username,
            who.identity,
            who.user_id,
            who.client_ip,
            tx,
        );
        let work = async {
            // The reader ends only when its reply queue is gone, which
            // cannot happen while the collector below runs.
            let _ = Box::pin(reader.on_text(text)).await;
            reader.finish().await;
        };
        let collect = async {
            let mut replies = Vec::new();
            while let Some(out) = rx.recv().await {
                match out {
                    Outbound::Reply(frame) => replies.push(frame.as_str().to_owned()),
                    Outbound::ReaderDone => break,
                    _ => {}
                }
            }
            replies
        };
        let ((), replies) = tokio::join!(work, collect);
        replies
    }
}
