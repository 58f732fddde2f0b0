//! The accept loop and the HTTP phase of every connection: what a peer can
//! hold before it has upgraded to a WebSocket, and so before any per-connection
//! limit applies.
//!
//! `axum::serve` bounds none of it: no header timeout, no cap on sockets that
//! are accepted but never send a request, and a fixed one-second sleep after an
//! accept error. Here each accepted socket is served by hyper's HTTP/1
//! connection (with upgrades) under these bounds:
//!
//! - **`HANDSHAKE_TIMEOUT_MS` from accept to upgrade.** hyper's header-read
//!   timeout (it needs a timer: [`TokioTimer`]) closes peers that send nothing
//!   or send their headers slowly; a deadline of our own covers what that timer
//!   does not: a request whose upgrade never completes, a trickling body, an
//!   HTTP keep-alive connection that lingers. At the deadline the connection is
//!   shut down gracefully (a request being answered gets [`GRACE`] to finish),
//!   then dropped.
//! - **`MAX_PENDING_HANDSHAKES` connections in that phase.** At the cap the
//!   *oldest* is closed to admit the new one. Waiting instead (not accepting)
//!   would leave probes and legitimate clients queued in the kernel backlog
//!   behind a slow attacker; a legitimate handshake takes milliseconds, so the
//!   oldest pending connection is almost always a slow or silent one.
//! - **Accept errors** (`EMFILE`, `ENFILE`, `ENOBUFS`, …) are counted and
//!   retried after a short exponential backoff ([`BACKOFF_MIN`] to
//!   [`BACKOFF_MAX`]), never in a busy loop; existing connections are not
//!   affected. At the descriptor limit the oldest connection pending for over
//!   [`STALE_PENDING`] is closed to free a descriptor, so the gateway keeps
//!   accepting (and answering `/livez`, `/metrics`) while slow peers hold the
//!   rest. Either kind of shedding in the last [`OVERLOAD_WINDOW`] makes
//!   `/readyz` answer 503 with the reason ([`Overload`]).
//!
//! hyper's own HTTP/1 builder is used rather than hyper-util's `auto` one: the
//! gateway speaks HTTP/1.1 only (browsers open `ws://` and `wss://` over
//! HTTP/1.1; no HTTP/2 support is compiled in), and that builder has the header
//! timeout and the head-size limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use chat_shared::metrics as m;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::listener::{ChatListener, Peer, PeerStream};
use crate::state::AppState;

/// Time a request still being answered at the handshake deadline (or at
/// shutdown) gets to finish before its connection is dropped.
pub const GRACE: Duration = Duration::from_secs(1);

/// Largest request head (request line plus headers) buffered per connection.
/// hyper answers 431 beyond it. With `MAX_PENDING_HANDSHAKES` this bounds the
/// memory pending peers can hold (1024 × 64 KiB = 64 MiB).
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// First pause after a failed `accept`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Longest pause between `accept` retries while they keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// A connection pending this long may be closed to free a descriptor when
/// `accept` hits the descriptor limit. Legitimate handshakes take milliseconds.
pub const STALE_PENDING: Duration = Duration::from_secs(1);

/// How long an overload event keeps `/readyz` at 503.
pub const OVERLOAD_WINDOW: Duration = Duration::from_secs(1);

/// Recent overload events, for `/readyz`.
#[derive(Debug)]
pub struct Overload {
    origin: Instant,
    /// Milliseconds since `origin` plus one of the last event; 0 = never.
    fd_limit_at: AtomicU64,
    shed_at: AtomicU64,
}

impl Default for Overload {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            fd_limit_at: AtomicU64::new(0),
            shed_at: AtomicU64::new(0),
        }
    }
}

impl Overload {
    /// Why the gateway is overloaded right now, if it is.
    pub fn reason(&self) -> Option<&'static str> {
        if self.recent(&self.fd_limit_at) {
            Some("overloaded: accept fails for lack of file descriptors")
        } else if self.recent(&self.shed_at) {
            Some("overloaded: MAX_PENDING_HANDSHAKES reached, shedding the oldest")
        } else {
            None
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn recent(&self, at: &AtomicU64) -> bool {
        let at = at.load(Ordering::Relaxed);
        at != 0 && self.now_ms().saturating_sub(at) <= OVERLOAD_WINDOW.as_millis() as u64
    }

    fn mark_fd_limit(&self) {
        self.fd_limit_at.store(self.now_ms(), Ordering::Relaxed);
    }

    fn mark_shed(&self) {
        self.shed_at.store(self.now_ms(), Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, shuts pending connections down (each within its deadline, at
/// most [`GRACE`] after the signal) and returns. Upgraded WebSockets are not
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

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    handshake_timeout: Duration,
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

/// Connections in their HTTP phase, oldest first, capped.
#[derive(Debug)]
struct PendingSet {
    cap: usize,
    inner: Mutex<PendingInner>,
}

#[derive(Debug, Default)]
struct PendingInner {
    next_id: u64,
    /// By admission order: the first entry is the oldest.
    slots: BTreeMap<u64, (Instant, CancellationToken)>,
}

impl PendingSet {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::new(PendingInner::default()),
        }
    }

    /// Registers a new connection, closing the oldest one when at the cap.
    /// Returns the slot (released on drop) and the token that closes it.
    fn admit(self: &Arc<Self>, overload: &Overload) -> (PendingSlot, CancellationToken) {
        let close = CancellationToken::new();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.slots.len() >= self.cap {
            if let Some((_, (_, oldest))) = inner.slots.pop_first() {
                oldest.cancel();
                metrics::counter!(m::GW_PENDING_CLOSED, "reason" => "shed").increment(1);
                overload.mark_shed();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.slots.insert(id, (Instant::now(), close.clone()));
        metrics::gauge!(m::GW_PENDING_CONNECTIONS).set(inner.slots.len() as f64);
        drop(inner);
        let slot = PendingSlot {
            set: self.clone(),
            id,
        };
        (slot, close)
    }

    /// Closes the oldest connection if it has been pending for `min_age`;
    /// whether one was closed.
    fn shed_oldest(&self, min_age: Duration, reason: &'static str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut oldest) = inner.slots.first_entry() else {
            return false;
        };
        if oldest.get().0.elapsed() < min_age {
            return false;
        }
        oldest.get_mut().1.cancel();
        oldest.remove();
        metrics::gauge!(m::GW_PENDING_CONNECTIONS).set(inner.slots.len() as f64);
        metrics::counter!(m::GW_PENDING_CLOSED, "reason" => reason).increment(1);
        true
    }

    fn release(&self, id: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.slots.remove(&id).is_some() {
            metrics::gauge!(m::GW_PENDING_CONNECTIONS).set(inner.slots.len() as f64);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().slots.len()
    }
}

/// A connection's place in the [`PendingSet`], released when its HTTP phase ends.
#[derive(Debug)]
#[must_use = "the slot is released when dropped"]
struct PendingSlot {
    set: Arc<PendingSet>,
    id: u64,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.set.release(self.id);
    }
}

/// Lets a handler whose response is a long-lived stream (`/sse`) take its
/// connection out of the HTTP phase: once [`Streaming::start`] is called,
/// the handshake deadline and the pending-connection cap no longer apply to
/// it (the stream is a connection like an upgraded WebSocket, bounded by
/// `MAX_CONNECTIONS` and its own write timeouts instead).
#[derive(Debug, Clone, Default)]
pub struct Streaming(CancellationToken);

impl Streaming {
    /// Marks the connection as streaming its response.
    pub fn start(&self) {
        self.0.cancel();
    }
}

/// How a connection's HTTP phase ended, when the gateway ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Deadline,
    Shutdown,
}

/// Serves one connection's HTTP phase: requests until it upgrades, closes,
/// reaches its deadline, is shed, or the server stops.
async fn serve_connection(
    io: PeerStream,
    peer: Peer,
    router: Router,
    limits: Limits,
    close: CancellationToken,
    stop: CancellationToken,
    slot: PendingSlot,
) {
    let streaming = Streaming::default();
    let mut slot = Some(slot);
    // Whether any request got its answer: a keep-alive connection that
    // reaches the deadline after serving is not a slow peer.
    let served = Arc::new(AtomicBool::new(false));
    let service = {
        let served = served.clone();
        let streaming = streaming.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer.clone()));
            req.extensions_mut().insert(streaming.clone());
            let answer = router.clone().oneshot(req);
            let served = served.clone();
            async move {
                let response = answer.await;
                served.store(true, Ordering::Relaxed);
                response
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(limits.handshake_timeout);
    tokio::pin!(deadline);
    let started = streaming.0.clone();
    let cut = loop {
        let is_streaming = slot.is_none();
        break tokio::select! {
            result = conn.as_mut() => {
                // Upgraded (the socket now belongs to the WebSocket task), or closed.
                if let Err(e) = result {
                    if e.is_timeout() {
                        count_deadline(&served);
                    }
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            // Shed: dropping the connection closes the socket (counted by the shedder).
            () = close.cancelled(), if !is_streaming => return,
            () = &mut deadline, if !is_streaming => Cut::Deadline,
            () = stop.cancelled() => Cut::Shutdown,
            // A streamed response (`/sse`): out of the HTTP phase.
            () = started.cancelled(), if !is_streaming => {
                drop(slot.take());
                continue;
            }
        };
    };
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(GRACE, conn.as_mut()).await;
    if cut == Cut::Deadline {
        count_deadline(&served);
    }
}

/// Counts a connection closed at its handshake deadline.
fn count_deadline(served: &AtomicBool) {
    let reason = if served.load(Ordering::Relaxed) {
        "keepalive"
    } else {
        "timeout"
    };
    metrics::counter!(m::GW_PENDING_CLOSED, "reason" => reason).increment(1);
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

    #[test]
    fn the_oldest_is_shed_at_the_cap() {
        let set = Arc::new(PendingSet::new(2));
        let overload = Overload::default();
        let (a, close_a) = set.admit(&overload);
        let (_b, close_b) = set.admit(&overload);
        assert!(overload.reason().is_none());
        let (_c, close_c) = set.admit(&overload);
        assert!(close_a.is_cancelled(), "the oldest is closed");
        assert!(!close_b.is_cancelled() && !close_c.is_cancelled());
        assert_eq!(set.len(), 2);
        assert!(overload
            .reason()
            .unwrap()
            .contains("MAX_PENDING_HANDSHAKES"));
        // The shed slot's release is a no-op; the others stay.
        drop(a);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn only_stale_connections_are_shed_for_descriptors() {
        let set = Arc::new(PendingSet::new(8));
        let overload = Overload::default();
        let (slot, close) = set.admit(&overload);
        assert!(!set.shed_oldest(Duration::from_secs(3600), "fd_limit"));
        assert!(!close.is_cancelled());
        assert!(set.shed_oldest(Duration::ZERO, "fd_limit"));
        assert!(close.is_cancelled());
        assert_eq!(set.len(), 0);
        drop(slot);
        assert!(!set.shed_oldest(Duration::ZERO, "fd_limit"));
    }
}
