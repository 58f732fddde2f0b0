//! Who is in a room: the per-connection user record kept in Redis and the
//! presence answer built from it.
//!
//! Every registered connection has an entry `<gateway>/<conn>` → the JSON of
//! a [`PresenceUser`] in `chat:presence-conns:{connections:<room>}`, and its
//! user a count in `chat:presence-users:{connections:<room>}` (see
//! [`crate::redis::keys`]). Both keys share the slot of `connections:<room>`, so the
//! scripts that add and remove connections keep all of them consistent in
//! one call. A user's first connection makes the count 1 (a `join`), the
//! last one's removal makes it 0 (a `leave`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The user behind one connection, as stored per connection in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUser {
    /// The user key: the token's `sub` when authentication is on, else the
    /// display name. Connections with one key are one user.
    pub key: String,
    /// Display name.
    pub username: String,
    /// The token's `sub`; `None` when anonymous.
    pub user_id: Option<String>,
}

impl PresenceUser {
    /// The user of a connection: keyed by `user_id` when there is one.
    pub fn new(username: &str, user_id: Option<&str>) -> Self {
        Self {
            key: user_id.unwrap_or(username).to_owned(),
            username: username.to_owned(),
            user_id: user_id.map(str::to_owned),
        }
    }

    /// The JSON stored in Redis (the scripts read its `key` with `cjson`).
    pub fn to_json(&self) -> String {
        // A struct of strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a stored record; `None` when it is not one.
    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }
}

/// An anonymous user named `name` (its key is the name).
impl From<&str> for PresenceUser {
    fn from(name: &str) -> Self {
        Self::new(name, None)
    }
}

/// One user in a presence answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceEntry {
    /// Display name (of one of the user's connections).
    pub username: String,
    /// The token's `sub`; `null` when anonymous.
    pub user_id: Option<String>,
    /// The user's open connections in the room.
    pub connections: u64,
}

/// The answer of `GET /rooms/{room}/presence` and the `data` of a WS
/// `presence` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Presence {
    /// The room.
    pub room: String,
    /// Number of distinct users.
    pub count: usize,
    /// The users, ordered by user key.
    pub users: Vec<PresenceEntry>,
}

impl Presence {
    /// Groups per-connection records (the values of the presence-conns hash)
    /// by user key. Records that do not parse are skipped.
    pub fn from_records<'a>(room: &str, records: impl IntoIterator<Item = &'a str>) -> Self {
        let mut by_key: BTreeMap<String, PresenceEntry> = BTreeMap::new();
        for user in records.into_iter().filter_map(PresenceUser::from_json) {
            by_key
                .entry(user.key)
                .or_insert_with(|| PresenceEntry {
                    username: user.username,
                    user_id: user.user_id,
                    connections: 0,
                })
                .connections += 1;
        }
        Self {
            room: room.to_owned(),
            count: by_key.len(),
            users: by_key.into_values().collect(),
        }
    }

    /// Serializes as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The WS answer `{"type":"presence","data":{..}}`.
    pub fn frame(&self) -> String {
        crate::protocol::outbound::frame("presence", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_key_is_the_user_id_when_authenticated() {
        assert_eq!(PresenceUser::new("ana", None).key, "ana");
        let u = PresenceUser::new("Ana", Some("u1"));
        assert_eq!(u.key, "u1");
        assert_eq!(PresenceUser::from_json(&u.to_json()), Some(u));
        assert_eq!(PresenceUser::from_json("nope"), None);
    }

    #[test]
    fn two_tabs_are_one_user_with_two_connections() {
        let a = PresenceUser::new("ana", None).to_json();
        let b = PresenceUser::new("Bo", Some("u2")).to_json();
        let p = Presence::from_records("r", [a.as_str(), b.as_str(), a.as_str(), "junk"]);
        assert_eq!(p.count, 2);
        let frame: serde_json::Value = serde_json::from_str(&p.frame()).unwrap();
        assert_eq!(frame["type"], "presence");
        let json: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"room":"r","count":2,"users":[
                {"username":"ana","user_id":null,"connections":2},
                {"username":"Bo","user_id":"u2","connections":1}
            ]})
        );
    }
}
