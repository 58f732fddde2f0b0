//! Server-side publish: `POST /rooms/{room}/messages` with an API key.
//!
//! Bots and application backends post through the same append as WebSocket
//! clients, so their messages get the same order, `seq`, deduplication by
//! `client_id` and back-pressure. Keys come from `API_KEYS` and
//! `API_KEYS_FILE` as `name:key` or bare `key` entries (named `key<N>`).
//! The route also takes a user token or an anonymous session
//! ([`crate::http_send`]); without any credential it answers 401. A message posted with a key carries
//! `user_id` `api:<name>`, so its author is known and no token can claim it
//! (tokens with an `api:` sub are refused). Keys are compared as SHA-256
//! digests in constant time, and each key has its own rate limit.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chat_shared::ids::{Username, MAX_CLIENT_ID_CHARS};
use chat_shared::metrics as m;
use chat_shared::protocol::ErrorCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api_error::{parse_room, ApiError};
use crate::append::{self, Draft};
use crate::config::AccessArgs;
use crate::rate_limit::TokenBucket;
use crate::room_events;
use crate::state::AppState;

/// The configured API keys (as digests), their names and each key's budget.
#[derive(Debug)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    names: Vec<String>,
    budgets: Mutex<Vec<TokenBucket>>,
}

/// A presented key that matched a configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMatch<'a> {
    /// Its position among the configured keys.
    pub index: usize,
    /// Its name: given as `name:key`, else `key<N>` (N its 1-based position).
    pub name: &'a str,
}

impl KeyMatch<'_> {
    /// The user id of what is done with this key: `api:<name>`.
    pub fn user_id(&self) -> String {
        format!("{API_USER_PREFIX}{}", self.name)
    }
}

/// Prefix of the user id of API-key senders (tokens may not use it).
pub const API_USER_PREFIX: &str = "api:";

/// Longest API key name, in characters.
const MAX_KEY_NAME_CHARS: usize = 64;

/// Splits `entry` (`name:key` or a bare `key`, the `position`th of the list)
/// into its name and key.
fn parse_entry(entry: &str, position: usize) -> Result<(String, String), String> {
    let Some((name, key)) = entry.split_once(':') else {
        return Ok((format!("key{position}"), entry.to_owned()));
    };
    let (name, key) = (name.trim(), key.trim());
    if name.is_empty()
        || key.is_empty()
        || name.chars().count() > MAX_KEY_NAME_CHARS
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "API key {position} (of API_KEYS, then API_KEYS_FILE) must be `name:key` with a \
             name of 1-{MAX_KEY_NAME_CHARS} characters without spaces, and a key"
        ));
    }
    Ok((name.to_owned(), key.to_owned()))
}

impl ApiKeys {
    /// Reads `API_KEYS` and `API_KEYS_FILE`; `None` when no key is configured.
    /// Entries are `name:key` or a bare `key`, named `key<N>` after its
    /// 1-based position (the API_KEYS entries first, then the file's lines).
    ///
    /// # Errors
    /// A message for the operator when the file cannot be read, an entry is
    /// malformed or two keys have one name.
    pub fn from_args(args: &AccessArgs) -> Result<Option<Self>, String> {
        let mut entries: Vec<String> = args
            .api_keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(path) = &args.api_keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read API_KEYS_FILE {}: {e}", path.display()))?;
            entries.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let mut names = Vec::with_capacity(entries.len());
        let mut digests = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let (name, key) = parse_entry(entry, i + 1)?;
            if names.contains(&name) {
                return Err(format!(
                    "two API keys are named {name:?}; names must be unique"
                ));
            }
            names.push(name);
            digests.push(digest(&key));
        }
        let now = Instant::now();
        let budgets = entries
            .iter()
            .map(|_| TokenBucket::new(args.api_rate_limit_per_sec, args.api_rate_limit_burst, now))
            .collect();
        Ok(Some(Self {
            digests,
            names,
            budgets: Mutex::new(budgets),
        }))
    }

    /// The key `presented` matches; every key is compared, in constant
    /// time, whatever matches.
    pub fn find(&self, presented: &str) -> Option<KeyMatch<'_>> {
        let d = digest(presented);
        let mut found = None;
        for (i, k) in self.digests.iter().enumerate() {
            if bool::from(k.ct_eq(&d)) {
                found = Some(i);
            }
        }
        found.map(|index| KeyMatch {
            index,
            name: &self.names[index],
        })
    }

    /// Spends one unit of key `key`'s budget; `false` when it is spent.
    pub(crate) fn spend(&self, key: usize) -> bool {
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets
            .get_mut(key)
            .is_some_and(|b| b.try_take(Instant::now()))
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The request body.
#[derive(Debug, Deserialize)]
struct PublishBody {
    message: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
}

fn bad(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// The display name of messages posted without a `username`.
pub const DEFAULT_API_USERNAME: &str = "api";

/// `POST /rooms/{room}/messages`: 201 `{"id","timestamp","client_id"}` once
/// the message is durable.
pub(crate) async fn publish(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Some(keys) = &state.api_keys else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such route",
        ));
    };
    let presented = bearer(&headers).unwrap_or_default();
    let Some(key) = keys.find(presented) else {
        metrics::counter!(m::GW_API_REQUESTS, "result" => "unauthorized").increment(1);
        tracing::info!("Publish refused: missing or wrong API key");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "Authorization: Bearer <API key> is missing or wrong",
        ));
    };
    if !keys.spend(key.index) {
        metrics::counter!(m::GW_API_REQUESTS, "result" => "rate_limited").increment(1);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "this API key sends faster than API_RATE_LIMIT_PER_SEC allows",
        ));
    }
    let room = parse_room(&room)?;
    let body: PublishBody = serde_json::from_slice(&body).map_err(|_| {
        bad(
            ErrorCode::BadJson,
            "body must be a JSON object with a string \"message\"",
        )
    })?;
    let message = body.message.unwrap_or_default();
    if message.is_empty() {
        return Err(bad(ErrorCode::EmptyMessage, "message must not be empty"));
    }
    let max = state.limits.max_message_chars;
    if message.chars().count() > max {
        return Err(bad(
            ErrorCode::MessageTooLong,
            format!("message is longer than {max} characters"),
        ));
    }
    let username = Username::parse(body.username.as_deref().unwrap_or(DEFAULT_API_USERNAME))
        .map_err(|_| {
            bad(
                ErrorCode::InvalidUsername,
                "username must be 1-64 characters without control characters",
            )
        })?;
    if body
        .client_id
        .as_ref()
        .is_some_and(|c| c.chars().count() > MAX_CLIENT_ID_CHARS)
    {
        return Err(bad(
            ErrorCode::InvalidClientId,
            format!("client_id is longer than {MAX_CLIENT_ID_CHARS} characters"),
        ));
    }
    if let Some(reply_to) = &body.reply_to {
        let exists = room_events::exists(&state.redis, &room, reply_to).await;
        if let Err(e) = exists {
            metrics::counter!(m::GW_API_REQUESTS, "result" => e.code.as_str()).increment(1);
            let status = match e.code {
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return Err(ApiError::new(status, e.code, e.message));
        }
    }
    let draft = Draft {
        reply_to: body.reply_to,
        ..Draft::message(
            username,
            Some(key.user_id()),
            body.client_id.clone(),
            message,
        )
    };
    let appended = append::append(&state.redis, state.config.append_limits(), &room, draft)
        .await
        .map_err(|e| {
            metrics::counter!(m::GW_API_REQUESTS, "result" => "unavailable").increment(1);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                e.client_message(),
            )
        })?;
    metrics::counter!(m::GW_API_REQUESTS, "result" => "accepted").increment(1);
    let body = serde_json::json!({
        "id": appended.id,
        "timestamp": appended.timestamp,
        "client_id": body.client_id,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &str, file: Option<&str>) -> Result<Option<ApiKeys>, String> {
        let api_keys_file = file.map(|text| {
            let path = std::env::temp_dir().join(format!(
                "chat-api-keys-{}-{}",
                std::process::id(),
                text.len()
            ));
            std::fs::write(&path, text).unwrap();
            path
        });
        ApiKeys::from_args(&AccessArgs {
            api_keys: list.into(),
            api_keys_file,
            ..AccessArgs::off()
        })
    }

    #[test]
    fn entries_are_named_or_numbered_by_position() {
        let k = keys("bot:k-one, k-two", Some("# comment\nk-three\nops:k-four\n"))
            .unwrap()
            .unwrap();
        let name = |key: &str| k.find(key).map(|m| m.name.to_owned());
        assert_eq!(name("k-one").as_deref(), Some("bot"));
        assert_eq!(name("k-two").as_deref(), Some("key2"));
        assert_eq!(name("k-three").as_deref(), Some("key3"));
        assert_eq!(name("k-four").as_deref(), Some("ops"));
        assert_eq!(k.find("bot:k-one"), None, "the name is not part of the key");
        assert_eq!(k.find("k-four").unwrap().user_id(), "api:ops");
        assert_eq!(k.find("k-two").unwrap().index, 1);
    }

    #[test]
    fn malformed_or_duplicate_names_are_refused() {
        assert!(keys("", None).unwrap().is_none());
        assert!(keys(":k", None).is_err());
        assert!(keys("bot:", None).is_err());
        assert!(keys("a b:k", None).is_err());
        let dup = keys("key2:k1, k2", None).unwrap_err();
        assert!(dup.contains("key2"), "{dup}");
    }
}
