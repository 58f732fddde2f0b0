//! The typing limit: at most one `typing` frame forwarded per connection per
//! second; the others are dropped silently (and counted).

use std::time::{Duration, Instant};

/// Shortest interval between two forwarded `typing` frames of a connection.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(1);

/// Per-connection state of the typing limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct TypingThrottle {
    last: Option<Instant>,
}

impl TypingThrottle {
    /// Whether a `typing` frame received at `now` may be forwarded; if so,
    /// it counts as the last one.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < TYPING_INTERVAL => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_second() {
        let mut t = TypingThrottle::default();
        let t0 = Instant::now();
        assert!(t.allow(t0));
        assert!(!t.allow(t0));
        assert!(!t.allow(t0 + Duration::from_millis(999)));
        assert!(t.allow(t0 + Duration::from_millis(1000)));
        // A dropped frame does not push the window forward.
        assert!(!t.allow(t0 + Duration::from_millis(1500)));
        assert!(t.allow(t0 + Duration::from_millis(2000)));
    }
}
