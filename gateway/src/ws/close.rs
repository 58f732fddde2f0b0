//! Why a connection ended: one reason per way out, each with its close code,
//! its text for the client and its metric label.

use axum::extract::ws::{CloseFrame, Utf8Bytes};

/// Close codes and reasons, one per way a connection can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
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
    /// A text message (or a close reason) is not valid UTF-8 (1007).
    InvalidUtf8,
    /// The peer broke the framing rules of RFC 6455 (1002); the text says which.
    ProtocolError(&'static str),
    /// The socket failed (I/O error, reset without a close frame).
    SocketError,
    /// The token expired without a `refresh` (4001).
    TokenExpired,
    /// The user was banned from the room (4003).
    Banned,
    /// Registrations are backed up: the connection was upgraded but could
    /// not be registered in time; the client retries after this many
    /// seconds, with jitter (1013).
    Overloaded {
        /// The hint in the close reason (`OVERLOAD_RETRY_AFTER_SECS`).
        retry_after_secs: u16,
    },
}

impl CloseReason {
    /// The metric label (`reason` of `chat_gateway_connections_closed_total`).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Shutdown => "shutdown",
            Self::SlowConsumer => "slow_consumer",
            Self::IdleTimeout => "idle_timeout",
            Self::Unavailable => "unavailable",
            Self::GapUnfilled => "gap_unfilled",
            Self::TooBig => "too_big",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::ProtocolError(_) => "protocol_error",
            Self::SocketError => "socket_error",
            Self::TokenExpired => "token_expired",
            Self::Banned => "banned",
            Self::Overloaded { .. } => "overloaded",
        }
    }

    /// The close frame to send, if the socket can still take one.
    pub(crate) fn frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Self::Client | Self::SocketError => return None,
            Self::Shutdown => (1001, "server shutting down; reconnect"),
            Self::SlowConsumer => (1013, "slow consumer: outbound queue full"),
            Self::IdleTimeout => (1008, "idle timeout: no pong received"),
            Self::Unavailable => (1011, "redis unavailable; retry later"),
            Self::GapUnfilled => (1011, "missed messages unavailable; reconnect with since"),
            Self::TooBig => (1009, "message larger than WS_MAX_MESSAGE_BYTES"),
            Self::InvalidUtf8 => (1007, "invalid UTF-8 in a text message"),
            Self::ProtocolError(what) => (1002, what),
            Self::TokenExpired => (4001, "token expired"),
            Self::Banned => (4003, "banned"),
            Self::Overloaded { retry_after_secs } => {
                return Some(CloseFrame {
                    code: 1013,
                    reason: overloaded_reason(retry_after_secs).into(),
                })
            }
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }

    /// Why a read from the socket failed, by tungstenite's error inside
    /// axum's: invalid UTF-8 is 1007, a broken framing rule 1002, a message
    /// or frame over the size limit 1009; I/O errors and resets need no
    /// close frame.
    pub(crate) fn from_socket_error(e: &axum::Error) -> Self {
        use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError as P};
        let source = std::error::Error::source(e);
        let Some(ws) = source.and_then(|s| s.downcast_ref::<WsError>()) else {
            return Self::SocketError;
        };
        match ws {
            WsError::Utf8(_) => Self::InvalidUtf8,
            WsError::Capacity(_) => Self::TooBig,
            WsError::Protocol(p) => match p {
                P::UnmaskedFrameFromClient => Self::ProtocolError("unmasked client frame"),
                P::ControlFrameTooBig => Self::ProtocolError("control frame over 125 bytes"),
                P::FragmentedControlFrame => Self::ProtocolError("fragmented control frame"),
                P::NonZeroReservedBits => Self::ProtocolError("reserved bits set"),
                P::UnknownControlFrameType(_)
                | P::UnknownDataFrameType(_)
                | P::InvalidOpcode(_) => Self::ProtocolError("unknown opcode"),
                P::UnexpectedContinueFrame => {
                    Self::ProtocolError("continuation frame without a message")
                }
                P::ExpectedFragment(_) => {
                    Self::ProtocolError("new message before the fragmented one ended")
                }
                P::InvalidCloseSequence => Self::ProtocolError("invalid close frame"),
                P::ReceivedAfterClosing => Self::ProtocolError("frame after the close frame"),
                // The peer vanished without a close frame: nothing to send.
                P::ResetWithoutClosingHandshake => Self::SocketError,
                _ => Self::ProtocolError("protocol error"),
            },
            _ => Self::SocketError,
        }
    }
}

/// The reason text of an overload close: `overloaded: retry after N s`
/// (clients read N from it, as they read `Retry-After` from a 503).
pub(crate) fn overloaded_reason(retry_after_secs: u16) -> String {
    format!("overloaded: retry after {retry_after_secs} s")
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
            CloseReason::InvalidUtf8,
            CloseReason::ProtocolError("x"),
            CloseReason::SocketError,
            CloseReason::TokenExpired,
            CloseReason::Overloaded {
                retry_after_secs: 2,
            },
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(CloseReason::GapUnfilled.frame().unwrap().code, 1011);
        assert!(CloseReason::Client.frame().is_none());
        let overloaded = CloseReason::Overloaded {
            retry_after_secs: 3,
        }
        .frame()
        .unwrap();
        assert_eq!(overloaded.code, 1013);
        assert_eq!(overloaded.reason.as_str(), "overloaded: retry after 3 s");
    }

    #[test]
    fn socket_errors_map_to_rfc_6455_close_codes() {
        use tokio_tungstenite::tungstenite::error::{CapacityError, Error, ProtocolError};
        let code = |e: Error| {
            CloseReason::from_socket_error(&axum::Error::new(e))
                .frame()
                .map(|f| f.code)
        };
        assert_eq!(code(Error::Utf8("\u{fffd}".into())), Some(1007));
        for p in [
            ProtocolError::UnmaskedFrameFromClient,
            ProtocolError::ControlFrameTooBig,
            ProtocolError::FragmentedControlFrame,
            ProtocolError::NonZeroReservedBits,
            ProtocolError::UnknownDataFrameType(3),
            ProtocolError::UnexpectedContinueFrame,
        ] {
            assert_eq!(code(Error::Protocol(p)), Some(1002));
        }
        let too_long = CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        };
        assert_eq!(code(Error::Capacity(too_long)), Some(1009));
        // Gone peers get no close frame.
        assert_eq!(
            code(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)),
            None
        );
        assert_eq!(code(Error::Io(std::io::ErrorKind::BrokenPipe.into())), None);
        assert_eq!(
            CloseReason::from_socket_error(&axum::Error::new(std::io::Error::other("x"))),
            CloseReason::SocketError
        );
    }
}
