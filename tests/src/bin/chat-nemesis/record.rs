//! What one schedule observed, the only input of the checker: each
//! publisher's sends with their outcome, each subscriber's connections and
//! the frames it received (as the JSON the gateway sent), the events the
//! webhook receiver got in arrival order, and the records Redis holds at the
//! end. Nothing here is computed by the service's code: frames and records
//! stay `serde_json::Value`, the protocol's JSON shapes.

use std::collections::BTreeMap;

use serde_json::Value;

/// What a publisher sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SentKind {
    /// A chat message (WebSocket `message` frame or HTTP publish).
    Message,
    /// An `edit` or `react` room event.
    Event,
}

/// One item a publisher sent (perhaps several times, with one `client_id`).
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// The room it was sent to.
    pub(crate) room: String,
    /// The `client_id` it was sent (and resent) with.
    pub(crate) client_id: String,
    /// Message or room event.
    pub(crate) kind: SentKind,
    /// The message text (for messages), unique per send.
    pub(crate) text: String,
    /// The `id` of its `ack` (or of the HTTP 201), if it was acked.
    pub(crate) acked_id: Option<String>,
    /// How many times it was sent.
    pub(crate) attempts: u32,
}

/// One publisher's sends, in send order.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublisherLog {
    /// `p<k>` for WebSocket publishers, `http` for the HTTP one.
    pub(crate) name: String,
    /// Its sends, in the order it sent them (each only after the previous
    /// one was acked or given up).
    pub(crate) sent: Vec<Sent>,
}

/// What happened on a subscriber's socket.
#[derive(Debug, Clone)]
pub(crate) enum SubEvent {
    /// A new connection, with the `since` and `epoch` it asked for.
    Connect {
        /// Index of the gateway.
        gateway: usize,
        /// `since` in the URL.
        since: Option<u64>,
    },
    /// A frame the gateway sent (history, message, edit, delete, reaction).
    Frame(Value),
    /// The server closed the socket with this code and reason.
    Closed(u16, String),
    /// The socket failed or ended without a close frame.
    Dropped(String),
}

/// One subscriber's life: every connection and frame, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct SubscriberLog {
    /// `s<room>-<gateway>`.
    pub(crate) name: String,
    /// Its room.
    pub(crate) room: String,
    /// What its sockets saw.
    pub(crate) events: Vec<SubEvent>,
    /// Whether a connection was open when the schedule ended.
    pub(crate) connected_at_end: bool,
    /// Whether the gateway of that connection answered `/readyz` with 200
    /// at the end.
    pub(crate) gateway_ready_at_end: bool,
}

/// Everything the checker reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observations {
    /// The rooms of the workload.
    pub(crate) rooms: Vec<String>,
    /// WebSocket publishers (one room each) and the HTTP publisher.
    pub(crate) publishers: Vec<PublisherLog>,
    /// Subscribers.
    pub(crate) subscribers: Vec<SubscriberLog>,
    /// Every event object of every webhook request, in arrival order.
    pub(crate) webhook_events: Vec<Value>,
    /// `LRANGE messages:<room> 0 -1` at the end, parsed, per room.
    pub(crate) stored: BTreeMap<String, Vec<Value>>,
}
