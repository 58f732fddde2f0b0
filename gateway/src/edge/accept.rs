//! The accept loop: takes sockets from the listener, hands each to its HTTP
//! phase ([`super::handshake`]: bounded in time and number), and survives
//! `accept` failing.
//!
//! `axum::serve` bounds none of what a peer can hold before it upgrades: no
//! header timeout, no cap on sockets that are accepted but never send a
//! request, and a fixed one-second sleep after an accept error. Here:
//!
//! - **Accept errors** (`EMFILE`, `ENFILE`, `ENOBUFS`, …) are counted and
//!   retried after a short exponential backoff ([`BACKOFF_MIN`] to
//!   [`BACKOFF_MAX`]), never in a busy loop; existing connections are not
//!   affected. At the descriptor limit the oldest connection pending for over
//!   [`STALE_PENDING`] is closed to free a descriptor, so the gateway keeps
//!   accepting (and answering `/livez`, `/metrics`) while slow peers hold the
//!   rest. Either kind of shedding in the last
//!   [`OVERLOAD_WINDOW`](super::overload::OVERLOAD_WINDOW) makes `/readyz`
//!   answer 503 with the reason ([`Overload`](super::overload::Overload)).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use chat_shared::metrics as m;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handshake::{serve_connection, Limits, PendingSet};
use super::listener::ChatListener;
use crate::state::AppState;

/// First pause after a failed `accept`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Longest pause between `accept` retries while they keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// A connection pending this long may be closed to free a descriptor when
/// `accept` hits the descriptor limit. Legitimate handshakes take milliseconds.
pub const STALE_PENDING: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, shuts pending connections down (each within its deadline, at
/// most [`GRACE`](super::handshake::GRACE) after the signal) and returns. Upgraded WebSockets are not
/// waited for here: they are the application's (`AppState::tracker`).
pub async fn serve<F>(listener: ChatListener, router: Router, state: AppState, shutdown: F)
where
    F: Future<Output = ()>,
{
    let limits = Limits {
        handshake_timeout: state.config.handshake_timeout(),
    };
    let pending = Arc::new(PendingSet::new(
        usize::try_from(state.config.max_pending_handshakes).unwrap_or(usize::MAX),
    ));
    let conns = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut backoff = Backoff::default();
    let mut log = AcceptLog::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let error = match accepted {
            Ok((io, peer)) => {
                backoff = Backoff::default();
                let (slot, close) = pending.admit(&state.overload);
                conns.spawn(serve_connection(
                    io,
                    peer,
                    router.clone(),
                    limits,
                    close,
                    stop.clone(),
                    slot,
                ));
                continue;
            }
            Err(e) => e,
        };
        let kind = AcceptError::of(&error);
        metrics::counter!(m::GW_ACCEPT_ERRORS, "kind" => kind.label()).increment(1);
        let pause = match kind {
            // That one connection failed; the listener is fine.
            AcceptError::Connection => continue,
            AcceptError::FdLimit => {
                state.overload.mark_fd_limit();
                if pending.shed_oldest(STALE_PENDING, "fd_limit") {
                    // A descriptor is being freed: retry almost at once.
                    BACKOFF_MIN
                } else {
                    backoff.next()
                }
            }
            AcceptError::NoMemory | AcceptError::Other => backoff.next(),
        };
        log.failed(&error, kind);
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    // Stop accepting: new connections are refused by the kernel from here on.
    drop(listener);
    stop.cancel();
    conns.close();
    conns.wait().await;
}

/// Exponential backoff between failing `accept` calls.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        (BACKOFF_MIN * (1u32 << shift)).min(BACKOFF_MAX)
    }
}

/// Logs failed accepts at most every [`AcceptLog::EVERY`]: under a flood they
/// can fail hundreds of times a second (the counter has them all).
#[derive(Debug, Default)]
struct AcceptLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl AcceptLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn failed(&mut self, error: &std::io::Error, kind: AcceptError) {
        self.unlogged += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        tracing::warn!(
            error = %error,
            kind = kind.label(),
            failures = self.unlogged,
            "Accept failed; backing off and retrying (logged at most every 10 s)"
        );
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// What a failed `accept` means for the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptError {
    /// `EMFILE` / `ENFILE`: no descriptor for the new socket.
    FdLimit,
    /// `ENOBUFS` / `ENOMEM`: the kernel is short of memory.
    NoMemory,
    /// The pending connection itself failed (aborted, reset, protocol error).
    Connection,
    /// Anything else.
    Other,
}

impl AcceptError {
    // Linux errno values (std exposes no constants for them).
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const EPROTO: i32 = 71;
    const ENOBUFS: i32 = 105;

    fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.raw_os_error() {
            Some(Self::EMFILE | Self::ENFILE) => Self::FdLimit,
            Some(Self::ENOBUFS | Self::ENOMEM) => Self::NoMemory,
            Some(Self::EPROTO) => Self::Connection,
            _ => match e.kind() {
                ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionRefused => Self::Connection,
                _ => Self::Other,
            },
        }
    }

    /// The `kind` label of `chat_gateway_accept_errors_total`.
    fn label(self) -> &'static str {
        match self {
            Self::FdLimit => "fd_limit",
            Self::NoMemory => "no_memory",
            Self::Connection => "connection",
            Self::Other => "other",
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::default();
        let pauses: Vec<_> = (0..10).map(|_| b.next()).collect();
        assert_eq!(pauses[0], BACKOFF_MIN);
        assert_eq!(pauses[1], BACKOFF_MIN * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), BACKOFF_MAX);
    }

    #[test]
    fn accept_errors_are_classified() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(AcceptError::of(&e(24)), AcceptError::FdLimit);
        assert_eq!(AcceptError::of(&e(23)), AcceptError::FdLimit);
        assert_eq!(AcceptError::of(&e(105)), AcceptError::NoMemory);
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(AcceptError::of(&aborted), AcceptError::Connection);
        assert_eq!(
            AcceptError::of(&std::io::Error::other("x")),
            AcceptError::Other
        );
    }
}
