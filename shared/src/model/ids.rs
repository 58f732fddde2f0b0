//! Validated identifiers.
//!
//! Every id that ends up in a Redis key or a client frame is a newtype whose
//! constructor validates it, so code further in never re-checks.

use std::fmt;

use rand::Rng;

/// Longest accepted room id, in bytes (all allowed characters are ASCII).
pub const MAX_ROOM_LEN: usize = 64;
/// Longest accepted username, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;
/// Longest accepted `client_id` nonce, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 128;

/// A room id: 1–64 characters of `[A-Za-z0-9_.:-]`.
///
/// Braces are excluded on purpose: a room id is embedded in Redis keys and must
/// never be able to inject a cluster hash tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    /// Validates `raw` as a room id.
    ///
    /// # Errors
    /// Returns [`InvalidId`] when the id is empty, too long or has a character
    /// outside `[A-Za-z0-9_.:-]`.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_ROOM_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId)
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: 1–64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Validates `raw` as a username.
    ///
    /// # Errors
    /// Returns [`InvalidId`] when empty, longer than 64 characters, made only of
    /// whitespace, or holding a control character.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let chars = raw.chars().count();
        let ok = chars > 0
            && chars <= MAX_USERNAME_CHARS
            && !raw.trim().is_empty()
            && !raw.chars().any(char::is_control);
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId)
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// The name used when a client gives none: `anonymous`.
impl Default for Username {
    fn default() -> Self {
        Self("anonymous".to_owned())
    }
}

/// A process identity (`GATEWAY_ID` / `WORKER_ID`): 1–64 chars of
/// `[A-Za-z0-9_.-]`; no `/` because it is the separator in `connections:{room}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessId(String);

impl ProcessId {
    /// Validates an operator-given id.
    ///
    /// # Errors
    /// Returns [`InvalidId`] on an empty, too long, or badly charactered id.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId)
        }
    }

    /// The default identity: host name plus a random suffix, unique per process.
    pub fn generate() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "chat".to_owned());
        let host: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            .take(40)
            .collect();
        let suffix: u32 = rand::rng().random();
        Self(format!(
            "{}-{suffix:08x}",
            if host.is_empty() { "chat" } else { &host }
        ))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Returned by the constructors above; the caller maps it to its own error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid identifier")]
pub struct InvalidId;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids() {
        assert!(RoomId::parse("lobby").is_ok());
        assert!(RoomId::parse("a.b:c-d_e9").is_ok());
        assert!(RoomId::parse(&"x".repeat(64)).is_ok());
        assert!(RoomId::parse(&"x".repeat(65)).is_err());
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("a b").is_err());
        assert!(RoomId::parse("{tag}").is_err());
        assert!(RoomId::parse("é").is_err());
    }

    #[test]
    fn usernames() {
        assert!(Username::parse("ana").is_ok());
        assert!(Username::parse("Zoë Ünïcode").is_ok());
        assert!(Username::parse(&"é".repeat(64)).is_ok());
        assert!(Username::parse(&"é".repeat(65)).is_err());
        assert!(Username::parse("").is_err());
        assert!(Username::parse("   ").is_err());
        assert!(Username::parse("a\nb").is_err());
        assert!(Username::parse("a\u{7}").is_err());
    }

    #[test]
    fn process_ids() {
        assert!(ProcessId::parse("gw-1").is_ok());
        assert!(ProcessId::parse("gw/1").is_err());
        let a = ProcessId::generate();
        let b = ProcessId::generate();
        assert_ne!(a, b);
        assert!(ProcessId::parse(a.as_str()).is_ok());
    }
}
