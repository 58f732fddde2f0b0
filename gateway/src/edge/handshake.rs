//! Each accepted connection's HTTP phase, from accept to upgrade: what a
//! peer can hold before it has upgraded to a WebSocket, and so before any
//! per-connection limit applies. The policy, bounded in time and number:
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
//!
//! hyper's own HTTP/1 builder is used rather than hyper-util's `auto` one: the
//! gateway speaks HTTP/1.1 only (browsers open `ws://` and `wss://` over
//! HTTP/1.1; no HTTP/2 support is compiled in), and that builder has the header
//! timeout and the head-size limit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use chat_shared::metrics as m;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::listener::{Peer, PeerStream};
use super::overload::Overload;

/// Time a request still being answered at the handshake deadline (or at
/// shutdown) gets to finish before its connection is dropped.
pub const GRACE: Duration = Duration::from_secs(1);

/// Largest request head (request line plus headers) buffered per connection.
/// hyper answers 431 beyond it. With `MAX_PENDING_HANDSHAKES` this bounds the
/// memory pending peers can hold (1024 × 64 KiB = 64 MiB).
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) handshake_timeout: Duration,
}

/// Connections in their HTTP phase, oldest first, capped.
#[derive(Debug)]
pub(super) struct PendingSet {
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
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::new(PendingInner::default()),
        }
    }

    /// Registers a new connection, closing the oldest one when at the cap.
    /// Returns the slot (released on drop) and the token that closes it.
    pub(super) fn admit(self: &Arc<Self>, overload: &Overload) -> (PendingSlot, CancellationToken) {
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
    pub(super) fn shed_oldest(&self, min_age: Duration, reason: &'static str) -> bool {
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
pub(super) struct PendingSlot {
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
pub(super) async fn serve_connection(
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
