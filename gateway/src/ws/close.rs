//! Why a connection ended: one reason per way out, each with its close code,
//! its text for the client and its metric label.

use axum::extract::ws::{CloseFrame, Utf8Bytes};

/// Close codes and reasons, one per way a connection can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseReason {
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
    /// Missed deliveries could not be read from history, so the client would
    /// have a gap; it reconnects with `since` instead (1011).
    GapUnfilled,
    /// A message above `WS_MAX_MESSAGE_BYTES` arrived (1009).
    TooBig,
    /// The socket failed (protocol error, reset).
    SocketError,
    /// The token expired without a `refresh` (4001).
    TokenExpired,
}

impl CloseReason {
    /// The metric label (`reason` of `chat_gateway_connections_closed_total`).
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Shutdown => "shutdown",
            Self::SlowConsumer => "slow_consumer",
            Self::IdleTimeout => "idle_timeout",
            Self::Unavailable => "unavailable",
            Self::GapUnfilled => "gap_unfilled",
            Self::TooBig => "too_big",
            Self::SocketError => "socket_error",
            Self::TokenExpired => "token_expired",
        }
    }

    /// The close frame to send, if the socket can still take one.
    pub(super) fn frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::Client | Self::SocketError => return None,
            Self::Shutdown => (1001, "server shutting down; reconnect"),
            Self::SlowConsumer => (1013, "slow consumer: outbound queue full"),
            Self::IdleTimeout => (1008, "idle timeout: no pong received"),
            Self::Unavailable => (1011, "redis unavailable; retry later"),
            Self::GapUnfilled => (1011, "missed messages unavailable; reconnect with since"),
            Self::TooBig => (1009, "message larger than WS_MAX_MESSAGE_BYTES"),
            Self::TokenExpired => (4001, "token expired"),
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_server_closes_carry_a_code() {
        let all = [
            CloseReason::Client,
            CloseReason::Shutdown,
            CloseReason::SlowConsumer,
            CloseReason::IdleTimeout,
            CloseReason::Unavailable,
            CloseReason::GapUnfilled,
            CloseReason::TooBig,
            CloseReason::SocketError,
            CloseReason::TokenExpired,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(CloseReason::GapUnfilled.frame().unwrap().code, 1011);
        assert!(CloseReason::Client.frame().is_none());
    }
}
