//! `MAX_CONNECTIONS` from the process's descriptor limit (`RLIMIT_NOFILE`).
//!
//! Every WebSocket or SSE connection holds one descriptor, every connection
//! still in its HTTP phase another (at most `MAX_PENDING_HANDSHAKES`), and the
//! process needs some of its own (listener, Redis connections, JWKS and log
//! files). When connections may take more than the limit leaves, `accept`
//! fails with `EMFILE` before the connection cap can answer 503. So the
//! default cap is what the limit leaves once the pending handshakes and a
//! reserve are taken out; an explicit `MAX_CONNECTIONS` above that is lowered
//! to it, with a warning.
//!
//! At start the soft limit is first raised to the hard one (many systems
//! start processes at 1,024 with a far higher hard limit).

/// Connections when the limit cannot be read or is unlimited.
pub const FALLBACK_MAX_CONNECTIONS: usize = 20_000;

/// Descriptors kept for the process's own use: the listener, Redis pool and
/// pub/sub connections, JWKS fetches, files. At most an eighth of the limit,
/// so a small limit still leaves room for connections.
pub const OWN_DESCRIPTORS: u64 = 256;

/// How the connection cap was decided, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The cap on WebSocket and SSE connections to use.
    pub max_connections: usize,
    /// The descriptor limit it was derived from (`None`: unknown/unlimited).
    pub nofile: Option<u64>,
    /// The explicit `MAX_CONNECTIONS`, when it was lowered to fit.
    pub lowered_from: Option<usize>,
}

/// The connection cap for a process whose soft descriptor limit is `nofile`,
/// with `pending` handshakes allowed and `explicit` from `MAX_CONNECTIONS`.
pub fn budget(nofile: Option<u64>, pending: u64, explicit: Option<usize>) -> Budget {
    let Some(nofile) = nofile else {
        return Budget {
            max_connections: explicit.unwrap_or(FALLBACK_MAX_CONNECTIONS),
            nofile: None,
            lowered_from: None,
        };
    };
    let reserve = OWN_DESCRIPTORS.min(nofile / 8);
    let after_reserve = nofile.saturating_sub(reserve);
    // Pending handshakes that do not fit are shed at EMFILE (the accept
    // loop closes the oldest); connections cannot be, so they keep at least
    // half of what is left.
    let fits = after_reserve
        .saturating_sub(pending)
        .max(after_reserve / 2)
        .max(1);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    match explicit {
        Some(n) if n > fits => Budget {
            max_connections: fits,
            nofile: Some(nofile),
            lowered_from: Some(n),
        },
        Some(n) => Budget {
            max_connections: n,
            nofile: Some(nofile),
            lowered_from: None,
        },
        None => Budget {
            max_connections: fits,
            nofile: Some(nofile),
            lowered_from: None,
        },
    }
}

/// Raises the soft descriptor limit to the hard one, derives the cap from it
/// ([`budget`]) and logs how.
pub fn max_connections(explicit: Option<usize>, pending: u64) -> usize {
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n > 0 && n != rlimit::INFINITY => Some(n),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read RLIMIT_NOFILE");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
                .filter(|&n| n > 0 && n != rlimit::INFINITY)
        }
    };
    let b = budget(nofile, pending, explicit);
    match (explicit, b.lowered_from, b.nofile) {
        (_, Some(asked), Some(nofile)) => tracing::warn!(
            max_connections = b.max_connections,
            asked,
            nofile,
            pending,
            "MAX_CONNECTIONS exceeds what RLIMIT_NOFILE leaves; lowered"
        ),
        (None, None, Some(nofile)) => tracing::info!(
            max_connections = b.max_connections,
            nofile,
            pending,
            "MAX_CONNECTIONS derived from RLIMIT_NOFILE"
        ),
        _ => {
            tracing::info!(max_connections = b.max_connections, nofile = ?b.nofile, "MAX_CONNECTIONS")
        }
    }
    b.max_connections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_limit_leaves_room_for_pending_and_own_descriptors() {
        let b = budget(Some(20_000), 1024, None);
        assert_eq!(b.max_connections, 18_720);
        assert_eq!(b.lowered_from, None);
    }

    #[test]
    fn an_explicit_cap_wins_below_the_budget_and_is_lowered_above() {
        assert_eq!(budget(Some(20_000), 1024, Some(500)).max_connections, 500);
        let b = budget(Some(20_000), 1024, Some(20_000));
        assert_eq!((b.max_connections, b.lowered_from), (18_720, Some(20_000)));
    }

    #[test]
    fn small_limits_keep_half_for_connections() {
        // 256 descriptors: reserve 32, pending 1024 cannot fit.
        assert_eq!(budget(Some(256), 1024, None).max_connections, 112);
        assert_eq!(budget(Some(400), 16, None).max_connections, 334);
        assert_eq!(budget(Some(1), 1024, None).max_connections, 1);
    }

    #[test]
    fn an_unknown_limit_keeps_the_explicit_value_or_the_fallback() {
        assert_eq!(budget(None, 1024, None).max_connections, 20_000);
        assert_eq!(budget(None, 1024, Some(7)).max_connections, 7);
    }
}
