//! The independent checker: from [`Observations`] alone (what clients saw,
//! what the webhook receiver got, what Redis holds at the end) it finds the
//! violations of the service's guarantees (DESIGN.md, "Guarantees" and
//! "Integrity under network faults").
//!
//! It shares no code with the service: it reads the protocol's JSON shapes
//! (`seq`, `id`, an event's `type` and `event_id`, a `history` frame's
//! `messages`, `truncated`, `reset`, `latest_seq`) and nothing else. A
//! stored item's key is its `event_id` when it is a room event, else its
//! `id`.
//!
//! Rules, one per [`Kind`]:
//! - every acked send is in the room's final history (the runs keep
//!   `HISTORY_LIMIT` above what they send, so nothing acked is trimmed);
//! - no item is stored twice (same key, or the same unique message text);
//! - the stored `seq`s rise by exactly 1 in list order;
//! - a sender's acked items are stored in its send order;
//! - a subscriber sees every `seq` after its join, in order, unless a
//!   `history` frame told it with `truncated` or `reset` (repeats are
//!   allowed: delivery is at least once);
//! - what a subscriber was delivered at a `seq` (a repeat too) is what
//!   history holds there, and history holds every delivered `seq`;
//! - a subscriber still connected to a ready gateway at the end has the
//!   room's last `seq` (else its socket went silent);
//! - every stored item reached the webhook, and a receiver that drops
//!   events whose `seq` is not above the last one it handled never skips one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::Value;

use crate::record::{Observations, SentKind, SubEvent, SubscriberLog};

/// The kinds of anomaly, with the names the report prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// An acked message or event is not in the room's history.
    AckedNotStored,
    /// One message or event is stored twice.
    StoredTwice,
    /// Stored `seq`s skip or repeat a number.
    SeqGap,
    /// A sender's acked items are stored out of its send order.
    SendOrder,
    /// A subscriber missed an item after its join without being told.
    MissedDelivery,
    /// A subscriber was delivered another item at a `seq` than history holds.
    DeliveryDiffers,
    /// A subscriber connected to a ready gateway stopped getting the room's items.
    SilentSocket,
    /// A stored item never reached the webhook.
    WebhookMissing,
    /// The webhook got a room's items out of `seq` order.
    WebhookOrder,
}

impl Kind {
    /// Every kind, in report order.
    pub(crate) const ALL: [Kind; 9] = [
        Kind::AckedNotStored,
        Kind::StoredTwice,
        Kind::SeqGap,
        Kind::SendOrder,
        Kind::MissedDelivery,
        Kind::DeliveryDiffers,
        Kind::SilentSocket,
        Kind::WebhookMissing,
        Kind::WebhookOrder,
    ];

    /// The short name printed in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::AckedNotStored => "acked_not_in_history",
            Kind::StoredTwice => "stored_twice",
            Kind::SeqGap => "seq_gap_or_repeat",
            Kind::SendOrder => "sender_order",
            Kind::MissedDelivery => "missed_delivery",
            Kind::DeliveryDiffers => "delivery_differs_from_history",
            Kind::SilentSocket => "silent_socket",
            Kind::WebhookMissing => "webhook_missing",
            Kind::WebhookOrder => "webhook_out_of_order",
        }
    }
}

/// One violation, with the ids and `seq`s that show it.
#[derive(Debug, Clone)]
pub(crate) struct Anomaly {
    /// What was violated.
    pub(crate) kind: Kind,
    /// Room, ids, `seq`s: enough to find it in the logs.
    pub(crate) evidence: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.kind.name(), self.evidence)
    }
}

/// The key of a stored or delivered item: an event's `event_id`, else `id`.
fn key(item: &Value) -> Option<String> {
    let k = if item.get("type").and_then(Value::as_str).is_some() {
        item.get("event_id").or_else(|| item.get("id"))
    } else {
        item.get("id")
    };
    k.and_then(Value::as_str).map(str::to_owned)
}

/// A `seq` for evidence: the number, or `none`.
fn show(s: Option<u64>) -> String {
    s.map_or_else(|| "none".to_owned(), |s| s.to_string())
}

fn seq(item: &Value) -> Option<u64> {
    item.get("seq").and_then(Value::as_u64)
}

/// The room's final history, indexed.
struct Room<'a> {
    records: &'a [Value],
    /// key → seq of its first copy.
    seq_of: HashMap<String, u64>,
    /// seq → key.
    key_at: HashMap<u64, String>,
    last_seq: u64,
}

impl<'a> Room<'a> {
    fn new(records: &'a [Value]) -> Self {
        let mut seq_of = HashMap::new();
        let mut key_at = HashMap::new();
        let mut last_seq = 0;
        for r in records {
            if let (Some(k), Some(s)) = (key(r), seq(r)) {
                seq_of.entry(k.clone()).or_insert(s);
                key_at.entry(s).or_insert(k);
                last_seq = last_seq.max(s);
            }
        }
        Self {
            records,
            seq_of,
            key_at,
            last_seq,
        }
    }
}

/// Runs every rule over `obs`; the anomalies found, in rule order.
pub(crate) fn check(obs: &Observations) -> Vec<Anomaly> {
    let rooms: BTreeMap<&str, Room<'_>> = obs
        .rooms
        .iter()
        .map(|r| {
            let recs = obs.stored.get(r).map_or(&[][..], Vec::as_slice);
            (r.as_str(), Room::new(recs))
        })
        .collect();
    let mut out = Vec::new();
    for (name, room) in &rooms {
        check_history(name, room, &mut out);
    }
    check_publishers(obs, &rooms, &mut out);
    for sub in &obs.subscribers {
        if let Some(room) = rooms.get(sub.room.as_str()) {
            check_subscriber(sub, room, &mut out);
        }
    }
    check_webhooks(obs, &rooms, &mut out);
    out
}

/// Stored twice, and `seq` gaps or repeats, in one room's final history.
fn check_history(name: &str, room: &Room<'_>, out: &mut Vec<Anomaly>) {
    let mut keys = HashSet::new();
    let mut texts: HashMap<&str, u64> = HashMap::new();
    let mut prev: Option<u64> = None;
    for r in room.records {
        let s = seq(r);
        if let Some(k) = key(r) {
            if !keys.insert(k.clone()) {
                out.push(Anomaly {
                    kind: Kind::StoredTwice,
                    evidence: format!("room {name}: key {k} stored again at seq {}", show(s)),
                });
            }
        }
        // Message texts are unique per send: a resend stored under a new id
        // has the same text.
        let plain = r.get("type").is_none();
        if let (true, Some(t)) = (plain, r.get("message").and_then(Value::as_str)) {
            if let Some(first) = texts.insert(t, s.unwrap_or(0)) {
                out.push(Anomaly {
                    kind: Kind::StoredTwice,
                    evidence: format!(
                        "room {name}: text {t:?} stored at seq {first} and again at seq {}",
                        show(s)
                    ),
                });
            }
        }
        match (prev, s) {
            (Some(p), Some(s)) if s != p + 1 => out.push(Anomaly {
                kind: Kind::SeqGap,
                evidence: format!("room {name}: seq {s} follows seq {p} in history"),
            }),
            (_, None) => out.push(Anomaly {
                kind: Kind::SeqGap,
                evidence: format!("room {name}: a record without seq: {r}"),
            }),
            _ => {}
        }
        prev = s.or(prev);
    }
}

/// Acked but not stored, and a sender's acked items out of its send order.
fn check_publishers(obs: &Observations, rooms: &BTreeMap<&str, Room<'_>>, out: &mut Vec<Anomaly>) {
    for p in &obs.publishers {
        let mut last: HashMap<&str, (u64, &str)> = HashMap::new();
        for s in &p.sent {
            let Some(id) = &s.acked_id else { continue };
            let Some(room) = rooms.get(s.room.as_str()) else {
                continue;
            };
            let what = match s.kind {
                SentKind::Message => "message",
                SentKind::Event => "event",
            };
            let Some(&stored) = room.seq_of.get(id) else {
                out.push(Anomaly {
                    kind: Kind::AckedNotStored,
                    evidence: format!(
                        "room {}: {} {what} {:?} client_id {} acked as {id} after {} attempt(s), not in history",
                        s.room, p.name, s.text, s.client_id, s.attempts
                    ),
                });
                continue;
            };
            if let Some(&(before, before_cid)) = last.get(s.room.as_str()) {
                if stored <= before {
                    out.push(Anomaly {
                        kind: Kind::SendOrder,
                        evidence: format!(
                            "room {}: {} sent {before_cid} (seq {before}) before {} (seq {stored})",
                            s.room, p.name, s.client_id
                        ),
                    });
                }
            }
            last.insert(s.room.as_str(), (stored, s.client_id.as_str()));
        }
    }
}

/// Where a subscriber stands while its frames are replayed.
struct Follow<'r, 'a> {
    name: &'r str,
    room_name: &'r str,
    room: &'r Room<'a>,
    /// The last `seq` it has without a gap; `None` before its first join.
    last: Option<u64>,
    /// How its last connection ended, for the evidence of a gap after it.
    last_break: Option<String>,
    /// No divergence check across a reset: the history is of another epoch.
    reset_seen: bool,
    out: &'r mut Vec<Anomaly>,
}

impl Follow<'_, '_> {
    /// One seq'd item: `how` is `history` (an element of a history frame,
    /// events carry their `type`) or the live frame's type (its `data`
    /// has no `type`; an event's key is its `event_id`).
    fn item(&mut self, item: &Value, how: &str) {
        let Some(s) = seq(item) else { return };
        let live_event = matches!(how, "edit" | "delete" | "reaction");
        let item_key = if live_event {
            item.get("event_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        } else {
            key(item)
        };
        if !self.reset_seen {
            self.same_as_history(s, item_key, how);
        }
        let last = self.last.unwrap_or(s.saturating_sub(1));
        if s <= last {
            return; // a repeat: delivery is at least once
        }
        if s > last + 1 {
            self.out.push(Anomaly {
                kind: Kind::MissedDelivery,
                evidence: format!(
                    "{} (room {}): got seq {s} ({how}) after seq {last}, missed {}..={} untold{}",
                    self.name,
                    self.room_name,
                    last + 1,
                    s - 1,
                    self.last_break
                        .as_deref()
                        .map(|b| format!(" (its last connection before: {b})"))
                        .unwrap_or_default()
                ),
            });
        }
        self.last = Some(s);
    }

    /// What was delivered at `s` (repeats too) is what history holds there;
    /// a delivered `seq` that history does not hold at all was lost after
    /// it was delivered.
    fn same_as_history(&mut self, s: u64, item_key: Option<String>, how: &str) {
        let Some(k) = item_key else { return };
        let want = self.room.key_at.get(&s);
        if want == Some(&k) {
            return;
        }
        let holds = want.map_or_else(|| "nothing there".to_owned(), |w| w.clone());
        self.out.push(Anomaly {
            kind: Kind::DeliveryDiffers,
            evidence: format!(
                "{} (room {}): seq {s} delivered as {k} ({how}), history holds {holds}",
                self.name, self.room_name,
            ),
        });
    }

    /// A `history` frame; `first` when it is the first frame of a connection
    /// that joined without `since`.
    fn history(&mut self, data: &Value, fresh_join: bool) {
        let told = data.get("truncated").and_then(Value::as_bool) == Some(true)
            || data.get("reset").is_some_and(|r| !r.is_null());
        if data.get("reset").is_some_and(|r| !r.is_null()) {
            self.reset_seen = true;
        }
        let msgs = data
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        if told || fresh_join {
            // A new starting point: what the frame holds, or the room's
            // latest seq when it holds nothing.
            self.last = match msgs.first().and_then(seq) {
                Some(s) => Some(s - 1),
                None => Some(data.get("latest_seq").and_then(Value::as_u64).unwrap_or(0)),
            };
        }
        for m in msgs {
            self.item(m, "history");
        }
    }
}

/// Missed deliveries, deliveries that differ from history, silent sockets.
fn check_subscriber(sub: &SubscriberLog, room: &Room<'_>, out: &mut Vec<Anomaly>) {
    let mut f = Follow {
        name: &sub.name,
        room_name: &sub.room,
        room,
        last: None,
        last_break: None,
        reset_seen: false,
        out,
    };
    // Whether the next history frame starts a connection that joined without since.
    let mut fresh_join = false;
    for ev in &sub.events {
        match ev {
            SubEvent::Connect { since, .. } => fresh_join = since.is_none(),
            SubEvent::Frame(v) => {
                let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
                let data = v.get("data").unwrap_or(&Value::Null);
                match kind {
                    "history" => {
                        f.history(data, fresh_join);
                        // "more" frames continue the same answer.
                        fresh_join = false;
                    }
                    "message" | "edit" | "delete" | "reaction" => {
                        if fresh_join && f.last.is_none() {
                            f.last = seq(data).map(|s| s - 1);
                        }
                        fresh_join = false;
                        f.item(data, kind);
                    }
                    _ => {}
                }
            }
            SubEvent::Closed(code, reason) => {
                f.last_break = Some(format!("closed {code} {reason:?}"));
            }
            SubEvent::Dropped(why) => f.last_break = Some(format!("dropped: {why}")),
        }
    }
    let last = f.last.unwrap_or(0);
    if sub.connected_at_end && last < room.last_seq {
        let why = if sub.gateway_ready_at_end {
            "its gateway is ready"
        } else {
            "its gateway is not ready"
        };
        f.out.push(Anomaly {
            kind: Kind::SilentSocket,
            evidence: format!(
                "{} (room {}): connected at the end with seq {last}, history ends at {} ({why})",
                sub.name, sub.room, room.last_seq
            ),
        });
    }
}

/// Webhook events missing or out of `seq` order per room.
fn check_webhooks(obs: &Observations, rooms: &BTreeMap<&str, Room<'_>>, out: &mut Vec<Anomaly>) {
    let mut got: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    for ev in &obs.webhook_events {
        let Some(room) = ev.get("room").and_then(Value::as_str) else {
            continue;
        };
        if let Some(k) = key(ev) {
            got.entry(room).or_default().insert(k);
        }
        let Some(s) = seq(ev) else { continue };
        let l = last.entry(room).or_insert(0);
        if s <= *l {
            continue; // a retried batch: dropped by the rule clients follow
        }
        if s > *l + 1 {
            out.push(Anomaly {
                kind: Kind::WebhookOrder,
                evidence: format!(
                    "room {room}: webhook got seq {s} after seq {l}: {}..={} skipped by a receiver that drops old seqs",
                    *l + 1,
                    s - 1
                ),
            });
        }
        *l = s;
    }
    for (name, room) in rooms {
        let seen = got.get(name);
        for r in room.records {
            let Some(k) = key(r) else { continue };
            if !seen.is_some_and(|s| s.contains(&k)) {
                out.push(Anomaly {
                    kind: Kind::WebhookMissing,
                    evidence: format!(
                        "room {name}: seq {:?} ({k}) never reached the webhook",
                        seq(r)
                    ),
                });
            }
        }
    }
}

/// Anomalies per kind, every kind listed.
pub(crate) fn per_kind(anomalies: &[Anomaly]) -> BTreeMap<Kind, usize> {
    let mut m: BTreeMap<Kind, usize> = Kind::ALL.iter().map(|k| (*k, 0)).collect();
    for a in anomalies {
        *m.entry(a.kind).or_default() += 1;
    }
    m
}
