//! Which transport carries a connection (`/ws` or `/sse`): below both the
//! shared admission (`conn`) and the connection lifecycle (`ws::connection`),
//! which both name it.

/// What carries a connection's frames; the `transport` label of the
/// connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A WebSocket (`/ws`).
    Ws,
    /// Server-sent events (`/sse`); the client sends over HTTP.
    Sse,
}

impl Transport {
    /// The metric label.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Ws => "ws",
            Self::Sse => "sse",
        }
    }
}
