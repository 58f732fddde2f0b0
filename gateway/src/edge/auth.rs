//! Client identity from JWTs (`jsonwebtoken`, HS256 / RS256 / ES256).
//!
//! Authentication is on when exactly one of `JWT_SECRET` (HS256, at least
//! [`MIN_SECRET_BYTES`]), `JWT_PUBLIC_KEY_FILE` (PEM, RS256 or ES256) or
//! `JWT_JWKS_URL` (keys chosen by `kid`, see [`crate::edge::jwks`]) is set; two of
//! them, or a shorter secret, is a configuration error (exit 64).
//! A token carries `sub` (the user id, required), `exp` (required), `nbf`
//! (enforced when present), `name` (display name, default `sub`), `rooms`
//! (ids or `prefix*` patterns; absent means every room) and `role`
//! (`moderator`). `JWT_ISSUER` and `JWT_AUDIENCE` are enforced when set.
//! A `sub` starting with `anon-` or `api:` is refused: those user ids belong
//! to anonymous sessions and API keys, and a token must not impersonate them.
//! Tokens and secrets are never logged.
//!
//! [`Authenticator::verify`] is synchronous (a known key is a map look-up);
//! [`Authenticator::verify_async`] also fetches the JWKS document again when
//! a token names a `kid` not seen yet.

use std::sync::Arc;
use std::time::Duration;

use chat_shared::ids::{RoomId, Username};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::AccessArgs;
use crate::edge::jwks::{Jwks, VerifyKey};

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the query or the `Authorization` header.
    #[error("a token is required: pass ?token= or Authorization: Bearer")]
    Missing,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// Bad signature, malformed, wrong issuer or audience, missing claim.
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

/// A verified user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`.
    pub user_id: String,
    /// Display name: the token's `name`, else `sub`.
    pub name: Username,
    /// Rooms the user may join; `None` means all.
    pub rooms: Option<Vec<String>>,
    /// `role: "moderator"`.
    pub moderator: bool,
    /// The token's `exp`, in Unix seconds.
    pub expires_at: u64,
}

impl Identity {
    /// Whether the token's `rooms` claim lets the user into `room`.
    pub fn may_join(&self, room: &RoomId) -> bool {
        self.rooms.as_ref().is_none_or(|patterns| {
            patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.as_str().starts_with(prefix),
                None => p == room.as_str(),
            })
        })
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    role: Option<String>,
}

/// Shortest `JWT_SECRET` accepted, in bytes: HS256 keys shorter than its
/// 256-bit output can be brute-forced from one token (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// User-id prefixes reserved for identities not given by tokens: anonymous
/// sessions (`anon-…`) and API keys (`api:<name>`).
pub const RESERVED_SUB_PREFIXES: [&str; 2] = ["anon-", "api:"];

/// Where the verification keys come from.
#[derive(Clone)]
enum Keys {
    /// `JWT_SECRET` or `JWT_PUBLIC_KEY_FILE`: one key.
    Fixed(Arc<VerifyKey>),
    /// `JWT_JWKS_URL`: keys by `kid`, refreshed.
    Jwks(Arc<Jwks>),
}

/// Verifies client tokens.
#[derive(Clone)]
pub struct Authenticator {
    keys: Keys,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Authenticator");
        match &self.keys {
            Keys::Fixed(k) => d.field("algorithms", &k.validation.algorithms),
            Keys::Jwks(j) => d.field("jwks", j),
        };
        d.finish_non_exhaustive()
    }
}

/// A setting counts as set when it is present and not empty (e.g. an unset
/// key of a Kubernetes Secret arrives as an empty variable).
fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

impl Authenticator {
    /// The authenticator for `args`, or `None` when authentication is off.
    /// Nothing is fetched yet: see [`Authenticator::start_refresh`].
    ///
    /// # Errors
    /// A message for the operator when two key settings are given, the
    /// secret is too short, or the key cannot be used.
    pub fn from_args(args: &AccessArgs) -> Result<Option<Self>, String> {
        let secret = non_empty(args.jwt_secret.as_deref());
        let pem_file = args
            .jwt_public_key_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty());
        let jwks_url = non_empty(args.jwt_jwks_url.as_deref());
        let given: Vec<&str> = [
            secret.map(|_| "JWT_SECRET"),
            pem_file.map(|_| "JWT_PUBLIC_KEY_FILE"),
            jwks_url.map(|_| "JWT_JWKS_URL"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(format!(
                "set only one of JWT_SECRET, JWT_PUBLIC_KEY_FILE and JWT_JWKS_URL (got {})",
                given.join(" and ")
            ));
        }
        let mut base = Validation::new(Algorithm::HS256);
        base.leeway = 0;
        base.validate_nbf = true;
        base.set_required_spec_claims(&["exp", "sub"]);
        match &args.jwt_issuer {
            Some(iss) => base.set_issuer(&[iss]),
            None => base.iss = None,
        }
        match &args.jwt_audience {
            Some(aud) => base.set_audience(&[aud]),
            None => base.validate_aud = false,
        }
        let keys = if let Some(secret) = secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "JWT_SECRET is {} bytes; it must be at least {MIN_SECRET_BYTES} \
                     (e.g. `openssl rand -base64 48`)",
                    secret.len()
                ));
            }
            let key = DecodingKey::from_secret(secret.as_bytes());
            Keys::Fixed(Arc::new(VerifyKey::new(key, Algorithm::HS256, &base)))
        } else if let Some(path) = pem_file {
            let (key, algorithm) = read_pem(path)?;
            Keys::Fixed(Arc::new(VerifyKey::new(key, algorithm, &base)))
        } else if let Some(url) = jwks_url {
            let every = Duration::from_secs(args.jwt_jwks_refresh_s);
            Keys::Jwks(Arc::new(Jwks::new(url, every, base.clone())?))
        } else {
            return Ok(None);
        };
        if args.jwt_audience.is_none() {
            tracing::warn!(
                "JWT_AUDIENCE is unset: tokens issued for any other service by the same \
                 issuer are accepted; set it to this service's audience"
            );
        }
        Ok(Some(Self { keys }))
    }

    /// For `JWT_JWKS_URL`: fetches the keys (awaited once) and keeps them
    /// fresh until `stop`. `None` for a fixed key, which needs no refresh.
    pub async fn start_refresh(
        &self,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        match &self.keys {
            Keys::Fixed(_) => None,
            Keys::Jwks(jwks) => Some(jwks.clone().start_refresh(stop).await),
        }
    }

    /// Verifies `token` with the keys known now and returns who it names.
    /// A token whose `kid` is not known is refused without a fetch; use
    /// [`Authenticator::verify_async`] where a request may wait for one.
    ///
    /// # Errors
    /// [`AuthError::Expired`] or [`AuthError::Invalid`].
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        match self.key_for(token)? {
            Found::Key(key) => decode(token, &key),
            Found::UnknownKid(_) => Err(unknown_kid()),
        }
    }

    /// [`Authenticator::verify`], but a token naming a `kid` not in the
    /// JWKS document first makes the document be fetched again (at most once
    /// per [`crate::edge::jwks::UNKNOWN_KID_REFETCH`]).
    ///
    /// # Errors
    /// [`AuthError::Expired`] or [`AuthError::Invalid`].
    pub async fn verify_async(&self, token: &str) -> Result<Identity, AuthError> {
        match self.key_for(token)? {
            Found::Key(key) => decode(token, &key),
            Found::UnknownKid(kid) => {
                let Keys::Jwks(jwks) = &self.keys else {
                    return Err(unknown_kid());
                };
                jwks.refetch_for(&kid).await;
                let key = jwks.key(&kid).ok_or_else(unknown_kid)?;
                decode(token, &key)
            }
        }
    }

    /// The key `token` must be verified with.
    fn key_for(&self, token: &str) -> Result<Found, AuthError> {
        match &self.keys {
            Keys::Fixed(key) => Ok(Found::Key(key.clone())),
            Keys::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|_| AuthError::Invalid("malformed token".into()))?;
                let kid = header
                    .kid
                    .ok_or_else(|| AuthError::Invalid("the token has no kid".into()))?;
                Ok(match jwks.key(&kid) {
                    Some(key) => Found::Key(key),
                    None => Found::UnknownKid(kid),
                })
            }
        }
    }
}

/// The outcome of a key look-up.
enum Found {
    Key(Arc<VerifyKey>),
    UnknownKid(String),
}

fn unknown_kid() -> AuthError {
    AuthError::Invalid("the token's kid names no known key".into())
}

/// Reads a PEM public key: RSA (RS256) or EC P-256 (ES256).
fn read_pem(path: &std::path::Path) -> Result<(DecodingKey, Algorithm), String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        Ok((key, Algorithm::RS256))
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        Ok((key, Algorithm::ES256))
    } else {
        Err(format!(
            "JWT_PUBLIC_KEY_FILE {} holds neither an RSA nor an EC public key in PEM",
            path.display()
        ))
    }
}

/// Checks `token`'s signature and claims with `key` and builds the identity.
fn decode(token: &str, key: &VerifyKey) -> Result<Identity, AuthError> {
    use jsonwebtoken::errors::ErrorKind;
    let data =
        jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => {
                    AuthError::Invalid("the token is not valid yet (nbf)".into())
                }
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim {c}"))
                }
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("wrong algorithm".into()),
                _ => AuthError::Invalid("malformed token".into()),
            }
        })?;
    let c = data.claims;
    if c.sub.is_empty() || c.sub.chars().count() > 128 || c.sub.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "sub must be 1-128 characters without control characters".into(),
        ));
    }
    if RESERVED_SUB_PREFIXES.iter().any(|p| c.sub.starts_with(p)) {
        return Err(AuthError::Invalid(
            "sub must not start with anon- or api: (reserved for anonymous sessions and API keys)"
                .into(),
        ));
    }
    let name = Username::parse(c.name.as_deref().unwrap_or(&c.sub))
        .map_err(|_| AuthError::Invalid("name is not a valid username".into()))?;
    Ok(Identity {
        user_id: c.sub,
        name,
        rooms: c.rooms,
        moderator: c.role.as_deref() == Some("moderator"),
        expires_at: c.exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn args(secret: &str) -> AccessArgs {
        AccessArgs {
            jwt_secret: Some(secret.into()),
            jwt_issuer: Some("app".into()),
            ..AccessArgs::off()
        }
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    /// A secret of the minimum length.
    const S: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn verifies_claims_and_room_patterns() {
        let auth = Authenticator::from_args(&args(S)).unwrap().unwrap();
        let t = token(
            serde_json::json!({"sub":"u1","exp":now()+60,"iss":"app","rooms":["lobby","team-*"],"role":"moderator"}),
            S,
        );
        let id = auth.verify(&t).unwrap();
        assert_eq!(id.user_id, "u1");
        assert_eq!(id.name.as_str(), "u1", "name defaults to sub");
        assert!(id.moderator);
        assert!(id.may_join(&RoomId::parse("lobby").unwrap()));
        assert!(id.may_join(&RoomId::parse("team-a").unwrap()));
        assert!(!id.may_join(&RoomId::parse("lobby2").unwrap()));
        assert!(!id.may_join(&RoomId::parse("other").unwrap()));
    }

    #[test]
    fn refusals() {
        let auth = Authenticator::from_args(&args(S)).unwrap().unwrap();
        let ok = serde_json::json!({"sub":"u","exp":now()+60,"iss":"app"});
        assert!(matches!(
            auth.verify(&token(ok.clone(), "other")),
            Err(AuthError::Invalid(_))
        ));
        let expired = serde_json::json!({"sub":"u","exp":now()-1,"iss":"app"});
        assert_eq!(auth.verify(&token(expired, S)), Err(AuthError::Expired));
        let wrong_iss = serde_json::json!({"sub":"u","exp":now()+60,"iss":"evil"});
        assert!(matches!(
            auth.verify(&token(wrong_iss, S)),
            Err(AuthError::Invalid(_))
        ));
        let no_sub = serde_json::json!({"exp":now()+60,"iss":"app"});
        assert!(matches!(
            auth.verify(&token(no_sub, S)),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(auth.verify("garbage"), Err(AuthError::Invalid(_))));
        assert!(Authenticator::from_args(&AccessArgs {
            jwt_secret: None,
            ..args(S)
        })
        .unwrap()
        .is_none());
    }

    #[test]
    fn nbf_in_the_future_and_reserved_subs_are_refused() {
        let auth = Authenticator::from_args(&args(S)).unwrap().unwrap();
        let early = serde_json::json!({"sub":"u","exp":now()+600,"nbf":now()+300,"iss":"app"});
        assert!(matches!(
            auth.verify(&token(early, S)),
            Err(AuthError::Invalid(_))
        ));
        let started = serde_json::json!({"sub":"u","exp":now()+600,"nbf":now()-1,"iss":"app"});
        assert!(auth.verify(&token(started, S)).is_ok());
        for sub in ["anon-x", "api:bot"] {
            let claims = serde_json::json!({"sub":sub,"exp":now()+60,"iss":"app"});
            assert!(
                matches!(auth.verify(&token(claims, S)), Err(AuthError::Invalid(_))),
                "{sub}"
            );
        }
    }

    #[test]
    fn key_settings_are_checked() {
        let short = Authenticator::from_args(&args("31-bytes-is-one-byte-too-short!")).unwrap_err();
        assert!(short.contains("JWT_SECRET"), "{short}");
        let two = Authenticator::from_args(&AccessArgs {
            jwt_jwks_url: Some("https://idp.example/jwks".into()),
            ..args(S)
        })
        .unwrap_err();
        assert!(two.contains("JWT_SECRET and JWT_JWKS_URL"), "{two}");
        let empty_ones = AccessArgs {
            jwt_secret: Some(String::new()),
            jwt_jwks_url: Some(String::new()),
            jwt_public_key_file: Some("".into()),
            ..AccessArgs::off()
        };
        assert!(Authenticator::from_args(&empty_ones).unwrap().is_none());
        let jwks = AccessArgs {
            jwt_jwks_url: Some("http://127.0.0.1:9/jwks".into()),
            ..AccessArgs::off()
        };
        let auth = Authenticator::from_args(&jwks).unwrap().unwrap();
        let t = token(serde_json::json!({"sub":"u","exp":now()+60}), S);
        assert_eq!(
            auth.verify(&t),
            Err(AuthError::Invalid("the token has no kid".into()))
        );
    }
}
