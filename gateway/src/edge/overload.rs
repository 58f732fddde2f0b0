//! Recent accept-loop overload (descriptor limit, pending-handshake cap),
//! remembered for a short window so `/readyz` can answer 503 with the reason.
//!
//! It lives below [`crate::state`] (the state holds one), and is marked by the
//! accept loop ([`super::accept`]) and the pending-handshake set
//! ([`super::handshake`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

    pub(super) fn mark_fd_limit(&self) {
        self.fd_limit_at.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(super) fn mark_shed(&self) {
        self.shed_at.store(self.now_ms(), Ordering::Relaxed);
    }
}
