//! `--self-test`: a checker that cannot fail proves nothing. This builds a
//! small clean synthetic history (one room, one publisher, two subscribers,
//! the webhook), checks that the checker finds nothing in it, then plants
//! one anomaly of each kind in a copy and checks that it is reported.

use serde_json::{json, Value};

use crate::checker::{check, Kind};
use crate::record::{Observations, PublisherLog, Sent, SentKind, SubEvent, SubscriberLog};

const ROOM: &str = "selftest";
const N: u64 = 6;

fn id(n: u64) -> String {
    format!("m{n}")
}

fn record(n: u64, seq: u64) -> Value {
    json!({"id": id(n), "room": ROOM, "message": format!("text {n}"), "seq": seq})
}

fn frame(kind: &str, data: Value) -> SubEvent {
    SubEvent::Frame(json!({"type": kind, "data": data}))
}

/// A clean history: messages 1..=N sent, acked, stored, delivered live to
/// one subscriber and through a reconnect with `since` to another, and
/// sent to the webhook.
fn clean() -> Observations {
    let records: Vec<Value> = (1..=N).map(|n| record(n, n)).collect();
    let sent = (1..=N)
        .map(|n| Sent {
            room: ROOM.into(),
            client_id: format!("c{n}"),
            kind: SentKind::Message,
            text: format!("text {n}"),
            acked_id: Some(id(n)),
            attempts: 1,
        })
        .collect();
    let mut live = vec![
        SubEvent::Connect {
            gateway: 0,
            since: None,
        },
        frame("history", json!({"room": ROOM, "messages": []})),
    ];
    live.extend(records.iter().map(|r| frame("message", r.clone())));
    let mut recovering = vec![
        SubEvent::Connect {
            gateway: 1,
            since: None,
        },
        frame(
            "history",
            json!({"room": ROOM, "messages": [records[0]], "latest_seq": 1}),
        ),
        frame("message", records[1].clone()),
        SubEvent::Closed(1001, "server shutting down; reconnect".into()),
        SubEvent::Connect {
            gateway: 2,
            since: Some(2),
        },
        frame(
            "history",
            json!({"room": ROOM, "messages": records[2..4], "latest_seq": 4}),
        ),
    ];
    recovering.extend(records[4..].iter().map(|r| frame("message", r.clone())));
    let subscriber = |name: &str, events| SubscriberLog {
        name: name.into(),
        room: ROOM.into(),
        events,
        connected_at_end: true,
        gateway_ready_at_end: true,
    };
    Observations {
        rooms: vec![ROOM.into()],
        publishers: vec![PublisherLog {
            name: "p0".into(),
            sent,
        }],
        subscribers: vec![
            subscriber("s-live", live),
            subscriber("s-recover", recovering),
        ],
        webhook_events: records.clone(),
        stored: [(ROOM.to_owned(), records)].into_iter().collect(),
    }
}

fn stored(o: &mut Observations) -> &mut Vec<Value> {
    o.stored.get_mut(ROOM).expect("the room's records")
}

/// Drops the live subscriber's `message` frame of `seq`.
fn drop_delivery(o: &mut Observations, seq: u64) {
    o.subscribers[0].events.retain(
        |e| !matches!(e, SubEvent::Frame(v) if v["type"] == "message" && v["data"]["seq"] == seq),
    );
}

/// A planted anomaly: what it is, the kind the checker must report for
/// it, and what it does to a clean history.
type Plant = (&'static str, Kind, fn(&mut Observations));

/// The planted anomalies.
fn plants() -> Vec<Plant> {
    vec![
        (
            "an acked record deleted from history",
            Kind::AckedNotStored,
            |o| {
                stored(o).retain(|r| r["id"] != "m3");
            },
        ),
        ("an acked record stored twice", Kind::StoredTwice, |o| {
            let again = record(2, N + 1);
            stored(o).push(again);
        }),
        ("a resend stored under a new id", Kind::StoredTwice, |o| {
            let mut again = record(4, N + 1);
            again["id"] = "m4-again".into();
            stored(o).push(again);
        }),
        ("a seq gap in history", Kind::SeqGap, |o| {
            for r in stored(o).iter_mut().skip(3) {
                r["seq"] = (r["seq"].as_u64().unwrap() + 1).into();
            }
        }),
        (
            "a sender's two messages stored out of order",
            Kind::SendOrder,
            |o| {
                let recs = stored(o);
                recs[0]["id"] = "m2".into();
                recs[1]["id"] = "m1".into();
            },
        ),
        (
            "a dropped delivery, nothing told",
            Kind::MissedDelivery,
            |o| {
                drop_delivery(o, 3);
            },
        ),
        (
            "a recovery that skips a message",
            Kind::MissedDelivery,
            |o| {
                let SubEvent::Frame(h) = &mut o.subscribers[1].events[5] else {
                    unreachable!("the recovery history frame")
                };
                h["data"]["messages"].as_array_mut().unwrap().remove(0);
            },
        ),
        (
            "another message delivered at a seq",
            Kind::DeliveryDiffers,
            |o| {
                let SubEvent::Frame(v) = &mut o.subscribers[0].events[3] else {
                    unreachable!("a message frame")
                };
                v["data"]["id"] = "m-other".into();
            },
        ),
        (
            "a delivered message lost from history",
            Kind::DeliveryDiffers,
            |o| {
                let lost = record(N + 1, N + 1);
                o.subscribers[0].events.push(frame("message", lost));
            },
        ),
        (
            "a repeat that differs from history",
            Kind::DeliveryDiffers,
            |o| {
                let mut again = record(9, 2);
                again["id"] = "m-other".into();
                o.subscribers[1].events.push(frame("message", again));
            },
        ),
        (
            "the tail never delivered on an open socket",
            Kind::SilentSocket,
            |o| {
                drop_delivery(o, N);
            },
        ),
        ("a webhook event missing", Kind::WebhookMissing, |o| {
            o.webhook_events.retain(|e| e["seq"] != 4);
        }),
        ("webhook events out of order", Kind::WebhookOrder, |o| {
            o.webhook_events.swap(1, 2);
        }),
    ]
}

/// Runs the self-test and prints one line per plant and the summary line;
/// `true` when the clean history is clean and every plant was reported.
pub(crate) fn run() -> bool {
    let base = check(&clean());
    for a in &base {
        println!("  clean history reported {a}");
    }
    let plants = plants();
    let mut reported = 0;
    for (what, kind, plant) in &plants {
        let mut obs = clean();
        plant(&mut obs);
        let found = check(&obs);
        let hit = found.iter().find(|a| a.kind == *kind);
        match hit {
            Some(a) => {
                reported += 1;
                println!("  planted {what}: reported {a}");
            }
            None => println!(
                "  planted {what}: NOT reported as {} (got {} other)",
                kind.name(),
                found.len()
            ),
        }
    }
    println!("self-test: {} planted, {reported} reported", plants.len());
    base.is_empty() && reported == plants.len()
}
