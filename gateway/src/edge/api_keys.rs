//! The credentials of HTTP requests: the named API keys of server-side
//! clients (bots, application backends) and the `Authorization: Bearer`
//! header that carries them (or a user token).
//!
//! Keys come from `API_KEYS` and `API_KEYS_FILE` as `name:key` or bare `key`
//! entries (named `key<N>`). What is done with a key carries `user_id`
//! `api:<name>`, so its author is known and no token can claim it. Keys are
//! compared as SHA-256 digests in constant time, and each key has its own
//! rate limit. They sit below [`crate::state`], which holds them.

use std::sync::Mutex;
use std::time::Instant;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::rate_limit::TokenBucket;
use crate::config::AccessArgs;

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

    /// Takes one message from key `key`'s budget; whether there was one.
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
