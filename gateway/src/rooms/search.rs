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

use crate::rooms::history::{self, Range, Snapshot};
use chat_shared::ids::RoomId;
use chat_shared::redis::{RedisError, RedisHandle};

/// Longest accepted query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;

/// Records read per round trip: a search walks the history newest first in
/// pages of this many, so no reply is larger than a page, commands of other
/// connections interleave between pages, and a search that finds its page
/// of matches early stops reading.
const SEARCH_PAGE: usize = 256;

/// One page of matches.
#[derive(Debug)]
pub struct Matches {
    /// The room's history state when the search began (page metadata), with
    /// the matching records, newest first, as its `records`.
    pub snapshot: Snapshot,
    /// More matches exist below the page's smallest `seq`.
    pub more: bool,
}

impl Matches {
    /// The matching records, newest first.
    pub fn records(&self) -> impl Iterator<Item = &str> {
        self.snapshot.records.iter().map(|(_, r)| r.as_str())
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
    let needle = query.to_lowercase();
    let first = match before {
        Some(before) => Range::Before {
            before,
            limit: SEARCH_PAGE,
        },
        None => Range::Tail(SEARCH_PAGE),
    };
    let mut page = history::read(redis, room, first).await?;
    let mut found = Snapshot {
        records: Vec::new(),
        ..page.clone()
    };
    let oldest = page.oldest_seq().unwrap_or(1);
    let mut more = false;
    loop {
        let full = page.records.len() == SEARCH_PAGE;
        let lowest = page.records.first().map(|(seq, _)| *seq);
        for (seq, record) in page.records.into_iter().rev() {
            if before.is_some_and(|b| seq >= b) || !matches(&record, &needle) {
                continue;
            }
            if found.records.len() == limit {
                more = true;
                break;
            }
            found.records.push((seq, record));
        }
        match lowest {
            Some(lowest) if !more && full && lowest > oldest => {
                let next = Range::Before {
                    before: lowest,
                    limit: SEARCH_PAGE,
                };
                page = history::read(redis, room, next).await?;
            }
            _ => break,
        }
    }
    Ok(Matches {
        snapshot: found,
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
