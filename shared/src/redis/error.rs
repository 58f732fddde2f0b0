//! The errors of the Redis layer, and which failures are worth repeating on
//! another connection.

/// Errors of the Redis layer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL could not be parsed.
    #[error("invalid REDIS_URL: {0}")]
    Url(#[source] redis::RedisError),
    /// A TLS option is unusable (unreadable or malformed file, or TLS files
    /// given for a URL that is not `rediss://`).
    #[error("{0}")]
    Tls(String),
    /// A connection could not be opened.
    #[error("redis connection: {0}")]
    Connection(String),
    /// A command failed.
    #[error("redis command: {0}")]
    Command(#[from] redis::RedisError),
    /// A command or connection attempt did not finish in time.
    #[error("redis timed out")]
    Timeout,
}

impl RedisError {
    /// A short fixed label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Url(_) => "url",
            Self::Tls(_) => "tls",
            Self::Connection(_) => "connection",
            Self::Command(_) => "command",
            Self::Timeout => "timeout",
        }
    }

    /// Whether Redis answered `NOSCRIPT`: an `EVALSHA` of a script it does
    /// not hold (it restarted or was flushed); the script did not run.
    pub fn is_no_script(&self) -> bool {
        matches!(self, Self::Command(e) if e.code() == Some("NOSCRIPT"))
    }

    /// Whether Redis refused the credentials of `REDIS_URL` (wrong or missing
    /// password, unknown or disabled ACL user) or the ACL user lacks a
    /// permission: a configuration error, not an outage.
    pub fn is_auth_failure(&self) -> bool {
        let Self::Command(e) = self else {
            return false;
        };
        e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    }
}

/// Whether a failed request is worth repeating on another connection: the
/// connection was refused or is gone. (It may still have run: callers of the
/// retrying methods only send idempotent requests.)
pub(super) fn not_sent(e: &redis::RedisError) -> bool {
    if e.is_connection_refusal() {
        return true;
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::NotConnected
        ),
        // The connection's driver is gone: the request was not written.
        None => e.kind() == redis::ErrorKind::Io,
    }
}
