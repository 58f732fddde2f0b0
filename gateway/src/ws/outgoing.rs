//! What a connection's writer hands its transport. Every frame is a
//! WebSocket [`Message`]; a transport that encodes frames its own way (`/sse`
//! turns each into an event) takes them converted. A live message is the
//! exception: it reaches every member of the room, so its encoding is made
//! once and shared ([`Outgoing::live`]), the way `/ws` shares the one
//! serialized frame.

use axum::extract::ws::Message;

use crate::delivery::registry::LiveMessage;

/// An item a connection's sink takes.
pub(crate) trait Outgoing: From<Message> {
    /// `live`'s frame for this transport, shared with the other members of
    /// its room rather than encoded per connection.
    fn live(live: &LiveMessage) -> Self;
}

impl Outgoing for Message {
    fn live(live: &LiveMessage) -> Self {
        Message::Text(live.frame.clone())
    }
}
