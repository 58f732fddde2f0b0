//! Ordered room events against real processes: edits, deletes and reactions
//! with their own `seq`, in one order on every gateway; who may change what
//! (authors, a `moderator` token); `not_found`; history and `since` recovery
//! showing the current state; replies and attachments; exact reaction counts
//! after a worker is SIGKILLed mid-burst.

mod common;

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const GW: &[(&str, &str)] = FAST_GW;
const WORKER: &[(&str, &str)] = FAST_WORKER;

/// The frame types that take a `seq` in a room.
const SEQUENCED: [&str; 4] = ["message", "edit", "delete", "reaction"];

/// A client that keeps the frames it skipped while waiting for a reply.
struct Member {
    c: Client,
    skipped: VecDeque<Value>,
}

impl Member {
    async fn join(url: &str) -> (Self, Value) {
        let (c, history) = Client::join(url).await;
        let m = Self {
            c,
            skipped: VecDeque::new(),
        };
        (m, history)
    }

    /// The next frame, skipped ones first.
    async fn next(&mut self) -> Value {
        match self.skipped.pop_front() {
            Some(v) => v,
            None => self.c.next_json().await,
        }
    }
}

/// Sends `frame` and returns the `ack` or `error` that answers it; other
/// frames arriving meanwhile are kept for later.
async fn request(m: &mut Member, frame: Value) -> Value {
    m.c.send_text(&frame.to_string()).await;
    loop {
        let v = m.c.next_json().await;
        if v["type"] == "ack" || v["type"] == "error" {
            return v;
        }
        m.skipped.push_back(v);
    }
}

/// Sends `frame` and asserts it is acked; returns the ack's `data`.
async fn acked(m: &mut Member, frame: Value) -> Value {
    let v = request(m, frame.clone()).await;
    assert_eq!(v["type"], "ack", "{frame} answered with {v}");
    v["data"].clone()
}

/// Sends `frame` and returns the error code it gets.
async fn refused(m: &mut Member, frame: Value) -> String {
    let v = request(m, frame.clone()).await;
    assert_eq!(v["type"], "error", "{frame} answered with {v}");
    v["data"]["code"].as_str().unwrap().to_owned()
}

/// The next `n` sequenced frames (messages and room events), as
/// `(type, data)`, other frames skipped.
async fn sequenced(m: &mut Member, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = m.next().await;
        let kind = v["type"].as_str().unwrap_or_default();
        if SEQUENCED.contains(&kind) {
            out.push((kind.to_owned(), v["data"].clone()));
        }
    }
    out
}

fn edit(room: &str, id: &Value, text: &str, client_id: &str) -> Value {
    json!({"type":"edit","data":{"room":room,"id":id,"message":text,"client_id":client_id}})
}

fn delete(room: &str, id: &Value, client_id: &str) -> Value {
    json!({"type":"delete","data":{"room":room,"id":id,"client_id":client_id}})
}

fn react(room: &str, id: &Value, emoji: &str, op: &str, client_id: &str) -> Value {
    json!({"type":"react","data":{"room":room,"id":id,"emoji":emoji,"op":op,"client_id":client_id}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_and_reactions_are_ordered_events_with_current_state_in_history() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw1 = start_gateway(&redis.url(), "gw1", GW).await;
    let gw2 = start_gateway(&redis.url(), "gw2", GW).await;
    let room = "events";
    let (mut alice, _) = Member::join(&gw1.ws_url(&format!("room={room}&username=alice"))).await;
    let (mut bob, _) = Member::join(&gw2.ws_url(&format!("room={room}&username=bob"))).await;

    let m1 = acked(&mut alice, message_frame(room, "first", "a1")).await["id"].clone();
    // Reacting right after the ack works: the id is indexed with the append.
    acked(&mut bob, react(room, &m1, "👍", "add", "b1")).await;
    acked(&mut bob, react(room, &m1, "👍", "add", "b2")).await;
    acked(&mut alice, react(room, &m1, "👍", "add", "a2")).await;
    acked(&mut alice, edit(room, &m1, "first, edited", "a3")).await;
    let edit_ack = acked(&mut alice, edit(room, &m1, "first, edited twice", "a4")).await;
    assert_uuid_v7(&edit_ack["id"]);
    assert_eq!(edit_ack["client_id"], "a4");

    // Only the author may edit or delete; unknown ids are not found; the
    // connection stays open through every refusal.
    assert_eq!(
        refused(&mut bob, edit(room, &m1, "mine now", "b3")).await,
        "forbidden"
    );
    assert_eq!(
        refused(&mut bob, delete(room, &m1, "b4")).await,
        "forbidden"
    );
    let unknown = json!("0190b6a0-0000-7000-8000-000000000000");
    assert_eq!(
        refused(&mut bob, react(room, &unknown, "👍", "add", "b5")).await,
        "not_found"
    );
    assert_eq!(
        refused(&mut bob, edit(room, &unknown, "x", "b6")).await,
        "not_found"
    );
    assert_eq!(
        refused(&mut bob, react(room, &m1, "", "add", "b7")).await,
        "invalid_parameter"
    );
    assert_eq!(
        refused(&mut bob, react(room, &m1, "👍", "toggle", "b8")).await,
        "invalid_parameter"
    );
    assert_eq!(
        refused(&mut bob, edit("elsewhere", &m1, "x", "b9")).await,
        "room_mismatch"
    );

    // Both gateways deliver the same sequence, seq by seq.
    let expect = [
        "message", "reaction", "reaction", "reaction", "edit", "edit",
    ];
    let seen_a = sequenced(&mut alice, expect.len()).await;
    let seen_b = sequenced(&mut bob, expect.len()).await;
    for seen in [&seen_a, &seen_b] {
        let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, expect);
        let seqs: Vec<u64> = seen
            .iter()
            .map(|(_, d)| d["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    }
    assert_eq!(seen_a, seen_b, "one order on every gateway");
    let (_, r2) = &seen_a[2];
    assert_eq!(r2["id"], m1);
    assert_eq!(r2["username"], "bob");
    assert_eq!(r2["emoji"], "👍");
    assert_eq!(r2["op"], "add");
    assert_eq!(r2["count"], 1, "bob's second add counts once");
    assert_eq!(seen_a[3].1["count"], 2);
    let (_, e) = &seen_a[5];
    assert_eq!(e["message"], "first, edited twice");
    assert_eq!(e["username"], "alice");
    assert_timestamp(&e["edited_at"]);
    assert!(e.get("type").is_none(), "the frame's type is outside data");

    // A newcomer's join history shows the message in its current state, then
    // the events in seq order.
    let (_, joined) = Member::join(&gw2.ws_url(&format!("room={room}&username=carol"))).await;
    let msgs = joined["data"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 6);
    assert_eq!(msgs[0]["message"], "first, edited twice");
    assert_eq!(msgs[0]["reactions"], json!({"👍": 2}));
    assert_eq!(msgs[0]["edited_at"], e["edited_at"]);
    assert!(msgs[0].get("type").is_none(), "a plain message has no type");
    assert_eq!(msgs[1]["type"], "reaction");
    assert_eq!(msgs[5]["type"], "edit");

    // Removing a reaction lowers the count; deleting leaves a tombstone.
    acked(&mut bob, react(room, &m1, "👍", "remove", "b10")).await;
    acked(&mut alice, delete(room, &m1, "a5")).await;
    let more = sequenced(&mut bob, 2).await;
    assert_eq!(more[0].0, "reaction");
    assert_eq!(more[0].1["count"], 1);
    assert_eq!(more[1].0, "delete");
    assert_eq!(more[1].1["id"], m1);
    assert_eq!(more[1].1["seq"], 8);
    assert_eq!(
        refused(&mut alice, edit(room, &m1, "back", "a6")).await,
        "not_found"
    );
    assert_eq!(
        refused(&mut bob, react(room, &m1, "👍", "add", "b11")).await,
        "not_found"
    );

    // Recovery with since replays the events; history shows the tombstone.
    let mut late = Client::connect(&gw1.ws_url(&format!("room={room}&since=5"))).await;
    let h = late.next_of_type("history").await;
    let replay: Vec<(String, u64)> = h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap_or("message").to_owned(),
                m["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        replay,
        [
            ("edit".to_owned(), 6),
            ("reaction".to_owned(), 7),
            ("delete".to_owned(), 8)
        ]
    );
    let (status, body) = http_get(&gw1.addr(), &format!("/rooms/{room}/messages"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    let first = &page["messages"][0];
    assert_eq!(first["deleted"], true);
    assert_eq!(first["id"], m1);
    assert_eq!(first["seq"], 1);
    assert!(
        first.get("message").is_none(),
        "a deleted message has no text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_attachments_are_validated_stored_and_delivered() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw = start_gateway(&redis.url(), "gw1", GW).await;
    let room = "threads";
    let (mut c, _) = Member::join(&gw.ws_url(&format!("room={room}&username=ana"))).await;
    let root = acked(&mut c, message_frame(room, "root", "c1")).await["id"].clone();
    let attachment =
        json!({"url":"https://files.example/a.png","name":"a.png","mime":"image/png","size":1234});
    let reply = json!({"type":"message","data":{"room":room,"message":"answer","reply_to":root,
        "attachments":[attachment],"client_id":"c2"}});
    acked(&mut c, reply).await;
    let got: Vec<Value> = sequenced(&mut c, 2)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(got[1]["reply_to"], root);
    assert_eq!(got[1]["attachments"], json!([attachment]));
    assert!(got[0].get("reply_to").is_none());

    let unknown = json!({"type":"message","data":{"room":room,"message":"lost",
        "reply_to":"0190b6a0-0000-7000-8000-000000000000","client_id":"c3"}});
    assert_eq!(refused(&mut c, unknown).await, "not_found");
    for bad in [
        json!([{"url":"http://plain.example/a"}]),
        json!([{"url":"https://x.example/a","mime":"png"}]),
        json!((0..11)
            .map(|_| json!({"url":"https://x.example/a"}))
            .collect::<Vec<_>>()),
    ] {
        let frame = json!({"type":"message","data":{"room":room,"message":"m","attachments":bad,"client_id":"c4"}});
        assert_eq!(refused(&mut c, frame).await, "invalid_parameter", "{bad}");
    }
    let wrong_type =
        json!({"type":"message","data":{"room":room,"message":"m","attachments":"a.png"}});
    assert_eq!(refused(&mut c, wrong_type).await, "bad_frame");
    // Still open, and nothing refused was stored.
    acked(&mut c, message_frame(room, "still here", "c5")).await;
    eventually("three messages stored", DEADLINE, || async {
        (stored_records(&redis, room).await.len() == 3).then_some(())
    })
    .await;
    let stored = stored_records(&redis, room).await;
    assert_eq!(stored[1]["reply_to"], root);
    assert_eq!(stored[1]["attachments"][0]["size"], 1234);
    assert_eq!(stored[2]["message"], "still here");
}

const SECRET: &str = "room-events-secret-room-events-secret";

fn token(sub: &str, role: Option<&str>) -> String {
    user_token(SECRET, sub, role)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_only_the_author_or_a_moderator_may_edit_or_delete() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let env: Vec<(&str, &str)> = GW.iter().copied().chain([("JWT_SECRET", SECRET)]).collect();
    let gw = start_gateway(&redis.url(), "gw1", &env).await;
    let room = "moderated";
    let url = |sub: &str, role| gw.ws_url(&format!("room={room}&token={}", token(sub, role)));
    let (mut author, _) = Member::join(&url("u-author", None)).await;
    // Same display name as the author, another user: names do not grant rights.
    let impostor_token = sign_token(
        SECRET,
        &json!({"sub":"u-other","name":"u-author","exp":jsonwebtoken::get_current_timestamp() + 600}),
    );
    let (mut other, _) =
        Member::join(&gw.ws_url(&format!("room={room}&token={impostor_token}"))).await;
    let (mut moderator, _) = Member::join(&url("u-mod", Some("moderator"))).await;

    let m1 = acked(&mut author, message_frame(room, "one", "a1")).await["id"].clone();
    let m2 = acked(&mut author, message_frame(room, "two", "a2")).await["id"].clone();
    assert_eq!(
        refused(&mut other, edit(room, &m1, "hijack", "o1")).await,
        "forbidden"
    );
    assert_eq!(
        refused(&mut other, delete(room, &m1, "o2")).await,
        "forbidden"
    );
    acked(&mut other, react(room, &m1, "🎉", "add", "o3")).await;
    acked(&mut moderator, edit(room, &m1, "moderated", "m1")).await;
    acked(&mut moderator, delete(room, &m2, "m2")).await;
    acked(&mut author, edit(room, &m1, "author again", "a3")).await;

    let seen = sequenced(&mut other, 6).await;
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["message", "message", "reaction", "edit", "delete", "edit"]
    );
    assert_eq!(seen[2].1["user_id"], "u-other");
    assert_eq!(seen[3].1["user_id"], "u-mod");
    assert_eq!(seen[4].1["id"], m2);
    let stored = stored_records(&redis, room).await;
    assert_eq!(stored[0]["message"], "author again");
    assert_eq!(stored[0]["reactions"], json!({"🎉": 1}));
    assert_eq!(stored[1]["deleted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_a_burst_of_reactions_leaves_exact_counts() {
    let redis = Redis::start().await;
    let worker: Vec<(&str, &str)> = WORKER
        .iter()
        .copied()
        .chain([("HISTORY_LIMIT", "5000")])
        .collect();
    let mut w1 = start_worker(&redis.url(), "w1", &worker).await;
    let gw = start_gateway(&redis.url(), "gw1", GW).await;
    let room = "burst";
    let (mut poster, _) = Member::join(&gw.ws_url(&format!("room={room}&username=poster"))).await;
    let target = acked(&mut poster, message_frame(room, "react to me", "p1")).await["id"].clone();

    // 24 users each, 8 times over: add two emojis, repeat one add, take
    // one back. Long enough that the kill lands inside the burst.
    let users = 24;
    let rounds = 8;
    let mut tasks = Vec::new();
    for u in 0..users {
        let url = gw.ws_url(&format!("room={room}&username=user-{u}"));
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = Member::join(&url).await;
            let ops = [("👍", "add"), ("❤", "add"), ("👍", "add"), ("❤", "remove")];
            for round in 0..rounds {
                for (i, (emoji, op)) in ops.into_iter().enumerate() {
                    let id = format!("u{u}-{round}-{i}");
                    acked(&mut c, react(room, &target, emoji, op, &id)).await;
                }
            }
            c
        }));
    }
    // Kill the worker once part of the burst is persisted; a fresh one takes
    // the shards over and re-processes whatever was pending.
    eventually("part of the burst persisted", DEADLINE, || async {
        (stored_records(&redis, room).await.len() > 100).then_some(())
    })
    .await;
    w1.proc.kill9();
    let w2 = start_worker(&redis.url(), "w2", &worker).await;
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let total = 1 + 4 * rounds * users;
    let stored = eventually(
        "every reaction persisted",
        Duration::from_secs(30),
        || async {
            let s = stored_records(&redis, room).await;
            (s.len() == total).then_some(s)
        },
    )
    .await;
    assert_eq!(stored[0]["reactions"], json!({"👍": users}));
    let seqs: Vec<u64> = stored.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "no seq burnt twice"
    );
    let event_ids: HashSet<&str> = stored[1..]
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(event_ids.len(), total - 1, "each event stored once");
    // The takeover happened inside the burst: the new worker stored part of it.
    let by_w2 = metric(&w2.addr(), "chat_worker_messages_persisted_total")
        .await
        .unwrap_or(0.0);
    assert!(by_w2 > 0.0, "the second worker persisted none of the burst");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_sizes_up_to_2_pow_53_survive_edits_and_reactions() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw = start_gateway(&redis.url(), "g1", GW).await;
    let room = "sizes";
    let (mut ana, _) = Member::join(&gw.ws_url(&format!("room={room}&username=ana"))).await;
    let sizes: [u64; 3] = [(1 << 53) - 1, 1 << 50, 1_125_899_906_842_623];
    let attachments: Vec<Value> = sizes
        .iter()
        .map(|s| json!({"url":"https://files.example/a","name":"a","mime":"image/png","size":s}))
        .collect();
    let sent = acked(
        &mut ana,
        json!({"type":"message","data":{"room":room,"message":"big files","client_id":"m1","attachments":attachments}}),
    )
    .await;
    let id = sent["id"].as_str().unwrap().to_owned();
    acked(
        &mut ana,
        json!({"type":"edit","data":{"room":room,"id":id,"message":"still big","client_id":"e1"}}),
    )
    .await;
    acked(
        &mut ana,
        json!({"type":"react","data":{"room":room,"id":id,"emoji":"👍","op":"add","client_id":"r1"}}),
    )
    .await;
    // Once both events are applied, the stored record keeps every size
    // exactly, as an integer (not 1.1258999068426e+15).
    let conn = redis.conn().await;
    let raw = eventually("edit and reaction applied", DEADLINE, || {
        let mut conn = conn.clone();
        async move {
            let raw: Vec<String> = redis::cmd("LRANGE")
                .arg(format!("messages:{room}"))
                .arg(0)
                .arg(0)
                .query_async(&mut conn)
                .await
                .ok()?;
            let rec: Value = serde_json::from_str(raw.first()?).ok()?;
            (rec["message"] == "still big" && rec["reactions"]["👍"] == 1).then(|| raw[0].clone())
        }
    })
    .await;
    for s in sizes {
        assert!(raw.contains(&format!("\"size\":{s}")), "{s} lost in {raw}");
    }
    let rec: Value = serde_json::from_str(&raw).unwrap();
    let stored: Vec<u64> = rec["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["size"].as_u64().unwrap())
        .collect();
    assert_eq!(stored, sizes);
    // A new member's history shows them the same way.
    let (_, history) = Member::join(&gw.ws_url(&format!("room={room}"))).await;
    let first = &history["data"]["messages"][0];
    assert_eq!(first["attachments"][0]["size"].as_u64(), Some(sizes[0]));
}
