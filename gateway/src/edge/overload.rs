//! Recent overload (descriptor limit, pending-handshake cap, registrations
//! backed up), remembered for a short window so `/readyz` can answer 503
//! with the reason and a load balancer sends new clients elsewhere.
//!
//! It lives below [`crate::state`] (the state holds one), and is marked by the
//! accept loop ([`super::accept`]), the pending-handshake set
//! ([`super::handshake`]) and the connection admission (`conn`, at
//! `MAX_PENDING_REGISTRATIONS`).

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
    registrations_at: AtomicU64,
}

impl Default for Overload {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            fd_limit_at: AtomicU64::new(0),
            shed_at: AtomicU64::new(0),
            registrations_at: AtomicU64::new(0),
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
        } else if self.recent(&self.registrations_at) {
            Some("overloaded: MAX_PENDING_REGISTRATIONS reached, refusing connections")
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

    /// Marks a connection refused at `MAX_PENDING_REGISTRATIONS`; returns
    /// whether this starts a new overload episode (none in the last
    /// window), so the caller logs once per episode, not per connection.
    pub(crate) fn mark_registrations(&self) -> bool {
        let now = self.now_ms();
        let before = self.registrations_at.swap(now, Ordering::Relaxed);
        before == 0 || now.saturating_sub(before) > OVERLOAD_WINDOW.as_millis() as u64
    }
}
