//! `GET /rooms/{room}/messages?q=`: case-insensitive search over a room's
//! stored history, newest first.
//!
//! History is what Redis holds for the room: at most `HISTORY_LIMIT` records
//! and `HISTORY_MAX_BYTES` of JSON (worker settings), so one search reads
//! and scans at most that much — there is no index to keep. Matching is on
//! the message text in its current state: edited messages match their new
//! text, deleted ones (no text) and room event records never match. At most
//! `SEARCH_CONCURRENCY` searches run at once per gateway; more wait.

use serde::Deserialize;

use crate::history::{self, Range, Snapshot};
use chat_shared::ids::RoomId;
use chat_shared::redis::{RedisError, RedisHandle};

/// Longest accepted query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;

/// More records than any room can hold (`HISTORY_LIMIT` is at most 1,000,000):
/// reads the whole history.
const WHOLE_HISTORY: usize = 1_000_000;

/// One page of matches.
#[derive(Debug)]
pub struct Matches {
    /// The room's history state, for the page's metadata.
    pub snapshot: Snapshot,
    /// Indexes into `snapshot.records` of the matches, newest first.
    pub hits: Vec<usize>,
    /// More matches exist below the page's smallest `seq`.
    pub more: bool,
}

impl Matches {
    /// The matching records, newest first.
    pub fn records(&self) -> impl Iterator<Item = &str> {
        self.hits
            .iter()
            .map(|&i| self.snapshot.records[i].1.as_str())
    }
}

/// The text of a stored record, if it is a message that still has one.
#[derive(Deserialize)]
struct Searchable {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    deleted: bool,
}

/// Whether `record` is a message whose current text contains `needle`
/// (already lower-cased), ignoring case.
fn matches(record: &str, needle: &str) -> bool {
    if record.starts_with("{\"type\":\"") {
        return false; // a room event, not a message
    }
    match serde_json::from_str::<Searchable>(record) {
        Ok(Searchable {
            message: Some(text),
            deleted: false,
        }) => text.to_lowercase().contains(needle),
        _ => false,
    }
}

/// Up to `limit` messages of `room` with `seq < before` (default: all)
/// whose text contains `query`, ignoring case; newest first.
///
/// # Errors
/// Fails when Redis does not answer.
pub async fn search(
    redis: &RedisHandle,
    room: &RoomId,
    query: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Matches, RedisError> {
    // A page with `before` reads only what lies below it.
    let range = match before {
        Some(before) => Range::Before {
            before,
            limit: WHOLE_HISTORY,
        },
        None => Range::Tail(WHOLE_HISTORY),
    };
    let snapshot = history::read(redis, room, range).await?;
    let needle = query.to_lowercase();
    let mut hits = Vec::new();
    let mut more = false;
    for (i, (seq, record)) in snapshot.records.iter().enumerate().rev() {
        if before.is_some_and(|b| *seq >= b) || !matches(record, &needle) {
            continue;
        }
        if hits.len() == limit {
            more = true;
            break;
        }
        hits.push(i);
    }
    Ok(Matches {
        snapshot,
        hits,
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_current_text_ignoring_case_and_never_events_or_deleted() {
        let needle = "ärger";
        assert!(matches(
            r#"{"id":"a","message":"Viel ÄRGER heute","seq":1}"#,
            needle
        ));
        assert!(!matches(r#"{"id":"a","message":"kein","seq":1}"#, needle));
        assert!(!matches(
            r#"{"id":"a","room":"r","deleted":true,"seq":1}"#,
            needle
        ));
        assert!(!matches(
            r#"{"type":"edit","id":"a","message":"ärger","seq":2}"#,
            needle
        ));
        assert!(!matches("not json", needle));
    }
}
