//! Anonymous identities (authentication off): a server-issued `user_id`
//! (`anon-<32 hex>`) per client, carried across connections and gateways by
//! an opaque, signed session.
//!
//! Every anonymous connection gets one `{"type":"session","data":{"user_id",
//! "session"}}` frame after its join history. A later connection that presents
//! `?session=<opaque>` keeps that `user_id`; a missing, tampered or foreign
//! session gets a fresh id, never someone else's. Authorship (edits,
//! deletes), reactions, receipts, presence and bans key on this id, never on
//! the display name a client picks per frame.
//!
//! A session is `<user_id>.<HMAC-SHA256(key, user_id), first 16 bytes, hex>`.
//! The key is `SESSION_SECRET`, or a random key generated once into Redis
//! (`SET NX` on [`keys::SESSION_KEY`]) so that every gateway shares it without
//! configuration. Sessions never expire by themselves; rotating the key
//! (a new `SESSION_SECRET`, or deleting the Redis key) ends them all.

use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

/// Prefix of every anonymous user id; tokens whose `sub` starts with it are
/// refused, so a token can never name an anonymous user.
pub const ANON_PREFIX: &str = "anon-";

/// Bytes of the HMAC kept in a session (128 bits).
const TAG_BYTES: usize = 16;

/// An anonymous identity and the session that proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonSession {
    /// `anon-<32 hex>`.
    pub user_id: String,
    /// The opaque value a client presents as `?session=` to keep `user_id`.
    pub session: String,
}

/// Issues and checks anonymous sessions with the key all gateways share.
#[derive(Debug)]
pub struct Sessions {
    configured: Option<Vec<u8>>,
    /// The key read from (or generated into) Redis, once.
    shared: OnceCell<Vec<u8>>,
}

impl Sessions {
    /// Sessions signed with `secret` when given (non-empty), else with the
    /// key kept in Redis.
    pub fn new(secret: Option<&str>) -> Self {
        Self {
            configured: secret
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec()),
            shared: OnceCell::new(),
        }
    }

    /// The signing key: `SESSION_SECRET`, or the shared key from Redis
    /// (generated there by the first gateway to need it).
    async fn key(&self, redis: &RedisHandle) -> Result<&[u8], RedisError> {
        if let Some(k) = &self.configured {
            return Ok(k);
        }
        let key = self
            .shared
            .get_or_try_init(|| async {
                let mut fresh = [0u8; 32];
                rand::rng().fill_bytes(&mut fresh);
                let _: Option<String> = redis
                    .query(
                        redis::cmd("SET")
                            .arg(keys::SESSION_KEY)
                            .arg(hex::encode(fresh))
                            .arg("NX"),
                    )
                    .await?;
                let stored: String = redis
                    .query(redis::cmd("GET").arg(keys::SESSION_KEY))
                    .await?;
                Ok::<_, RedisError>(stored.into_bytes())
            })
            .await?;
        Ok(key)
    }

    /// The identity of a connection: the one `presented` proves, else a
    /// fresh one.
    ///
    /// # Errors
    /// Fails only when the shared key cannot be read from Redis.
    pub async fn resolve(
        &self,
        redis: &RedisHandle,
        presented: Option<&str>,
    ) -> Result<AnonSession, RedisError> {
        let key = self.key(redis).await?;
        if let Some(user_id) = presented.and_then(|s| verify(key, s)) {
            return Ok(AnonSession {
                session: sign(key, &user_id),
                user_id,
            });
        }
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        let user_id = format!("{ANON_PREFIX}{}", hex::encode(raw));
        Ok(AnonSession {
            session: sign(key, &user_id),
            user_id,
        })
    }
}

impl Sessions {
    /// The identity `presented` proves, or `None` for a missing, tampered or
    /// foreign session (no fresh id: HTTP senders must prove one).
    ///
    /// # Errors
    /// Fails only when the shared key cannot be read from Redis.
    pub async fn check(
        &self,
        redis: &RedisHandle,
        presented: &str,
    ) -> Result<Option<String>, RedisError> {
        let key = self.key(redis).await?;
        Ok(verify(key, presented))
    }
}

fn tag(key: &[u8], user_id: &str) -> [u8; TAG_BYTES] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"chat-session-v1:");
    mac.update(user_id.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_BYTES];
    out.copy_from_slice(&full[..TAG_BYTES]);
    out
}

/// The session proving `user_id`.
fn sign(key: &[u8], user_id: &str) -> String {
    format!("{user_id}.{}", hex::encode(tag(key, user_id)))
}

/// The user id `session` proves, if its tag is right (compared in constant
/// time) and the id has the anonymous shape.
fn verify(key: &[u8], session: &str) -> Option<String> {
    let (user_id, presented) = session.rsplit_once('.')?;
    let hex_part = user_id.strip_prefix(ANON_PREFIX)?;
    if hex_part.len() != 32 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let presented = hex::decode(presented).ok()?;
    if presented.len() != TAG_BYTES {
        return None;
    }
    bool::from(presented.ct_eq(&tag(key, user_id))).then(|| user_id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "anon-0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signed_session_proves_its_id_and_nothing_else() {
        let s = sign(b"k1", ID);
        assert_eq!(verify(b"k1", &s).as_deref(), Some(ID));
        // Another key (another deployment, a rotated key): unknown.
        assert_eq!(verify(b"k2", &s), None);
        // Tampered id, tampered tag, truncated, garbage.
        let other = s.replacen("anon-0", "anon-1", 1);
        assert_eq!(verify(b"k1", &other), None);
        let mut bad_tag = s.clone();
        let last = bad_tag.pop().unwrap();
        bad_tag.push(if last == '0' { '1' } else { '0' });
        assert_eq!(verify(b"k1", &bad_tag), None);
        assert_eq!(verify(b"k1", &s[..s.len() - 2]), None);
        assert_eq!(verify(b"k1", "x"), None);
        assert_eq!(verify(b"k1", ""), None);
        // Only anonymous ids can be proven by a session.
        let forged = sign(b"k1", "alice");
        assert_eq!(verify(b"k1", &forged), None);
    }
}
