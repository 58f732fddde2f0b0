//! Client identity from JWTs (`jsonwebtoken`, HS256 / RS256 / ES256).
//!
//! Authentication is on when `JWT_SECRET` or `JWT_PUBLIC_KEY_FILE` is set.
//! A token carries `sub` (the user id, required), `exp` (required), `name`
//! (display name, default `sub`), `rooms` (ids or `prefix*` patterns; absent
//! means every room) and `role` (`moderator`). `JWT_ISSUER` and
//! `JWT_AUDIENCE` are enforced when set. Tokens and secrets are never logged.

use chat_shared::ids::{RoomId, Username};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AccessArgs;

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

/// Verifies client tokens.
#[derive(Clone)]
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The authenticator for `args`, or `None` when authentication is off.
    ///
    /// # Errors
    /// A message for the operator when the key cannot be used.
    pub fn from_args(args: &AccessArgs) -> Result<Option<Self>, String> {
        // An empty value (e.g. an unset key of a Kubernetes Secret) is unset.
        let secret = args.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let (key, algorithm) = match (secret, &args.jwt_public_key_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err("set either JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both".into())
            }
            (Some(secret), None) => (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("cannot read JWT_PUBLIC_KEY_FILE {}: {e}", path.display())
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(format!(
                        "JWT_PUBLIC_KEY_FILE {} holds neither an RSA nor an EC public key in PEM",
                        path.display()
                    ));
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &args.jwt_issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &args.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Some(Self { key, validation }))
    }

    /// Verifies `token` and returns who it names.
    ///
    /// # Errors
    /// [`AuthError::Expired`] or [`AuthError::Invalid`].
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim {c}"))
                }
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("wrong algorithm".into()),
                _ => AuthError::Invalid("malformed token".into()),
            },
        )?;
        let c = data.claims;
        if c.sub.is_empty() || c.sub.chars().count() > 128 || c.sub.chars().any(char::is_control) {
            return Err(AuthError::Invalid(
                "sub must be 1-128 characters without control characters".into(),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn args(secret: &str) -> AccessArgs {
        AccessArgs {
            jwt_secret: Some(secret.into()),
            jwt_public_key_file: None,
            jwt_issuer: Some("app".into()),
            jwt_audience: None,
            allowed_origins: "*".into(),
            max_connections_per_ip: 0,
            trusted_proxies: String::new(),
            user_rate_limit_per_sec: 0.0,
            user_rate_limit_burst: 20.0,
            room_creation_per_min: 0.0,
            room_creation_burst: 60.0,
            api_keys: String::new(),
            api_keys_file: None,
            api_rate_limit_per_sec: 100.0,
            api_rate_limit_burst: 200.0,
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

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn verifies_claims_and_room_patterns() {
        let auth = Authenticator::from_args(&args("s")).unwrap().unwrap();
        let t = token(
            serde_json::json!({"sub":"u1","exp":now()+60,"iss":"app","rooms":["lobby","team-*"],"role":"moderator"}),
            "s",
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
        let auth = Authenticator::from_args(&args("s")).unwrap().unwrap();
        let ok = serde_json::json!({"sub":"u","exp":now()+60,"iss":"app"});
        assert!(matches!(
            auth.verify(&token(ok.clone(), "other")),
            Err(AuthError::Invalid(_))
        ));
        let expired = serde_json::json!({"sub":"u","exp":now()-1,"iss":"app"});
        assert_eq!(auth.verify(&token(expired, "s")), Err(AuthError::Expired));
        let wrong_iss = serde_json::json!({"sub":"u","exp":now()+60,"iss":"evil"});
        assert!(matches!(
            auth.verify(&token(wrong_iss, "s")),
            Err(AuthError::Invalid(_))
        ));
        let no_sub = serde_json::json!({"exp":now()+60,"iss":"app"});
        assert!(matches!(
            auth.verify(&token(no_sub, "s")),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(auth.verify("garbage"), Err(AuthError::Invalid(_))));
        assert!(Authenticator::from_args(&AccessArgs {
            jwt_secret: None,
            ..args("s")
        })
        .unwrap()
        .is_none());
    }
}
