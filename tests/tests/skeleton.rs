//! End-to-end behaviour of one worker and two gateways over a real Redis:
//! ordering across gateways, history, acks, Redis bookkeeping, bad input, health.

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

struct Cluster {
    redis: Redis,
    _worker: Worker,
    gw1: Gateway,
    gw2: Gateway,
}

async fn cluster(gw_env: &[(&str, &str)]) -> Cluster {
    let redis = Redis::start().await;
    let worker = start_worker(&redis.url(), "w1", &[]).await;
    let gw1 = start_gateway(&redis.url(), "gw1", gw_env).await;
    let gw2 = start_gateway(&redis.url(), "gw2", gw_env).await;
    Cluster {
        redis,
        _worker: worker,
        gw1,
        gw2,
    }
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_gateways_see_one_order_and_other_rooms_see_nothing() {
    let c = cluster(&[]).await;
    let (mut a, ha) = Client::join(&c.gw1.ws_url("room=lobby&username=ana")).await;
    let (mut b, _) = Client::join(&c.gw2.ws_url("room=lobby&username=bo")).await;
    let (mut other, _) = Client::join(&c.gw1.ws_url("room=elsewhere")).await;
    assert_eq!(ha["data"]["messages"], json!([]));
    assert_eq!(ha["data"]["room"], "lobby");

    // Both send concurrently: 10 each.
    for i in 0..10 {
        a.say("lobby", &format!("a{i}"), &format!("ca{i}")).await;
        b.say("lobby", &format!("b{i}"), &format!("cb{i}")).await;
    }
    let mut got_a = Vec::new();
    let mut acks_a = Vec::new();
    while got_a.len() < 20 || acks_a.len() < 10 {
        let f = a.next_json().await;
        match f["type"].as_str().unwrap() {
            "message" => got_a.push(f["data"].clone()),
            "ack" => acks_a.push(f["data"].clone()),
            t => panic!("unexpected frame {t}: {f}"),
        }
    }
    let got_b = b.messages(20).await;

    assert_eq!(
        seqs(&got_a),
        (1..=20).collect::<Vec<_>>(),
        "seq rises by exactly 1"
    );
    let ids = |v: &[Value]| {
        v.iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&got_a),
        ids(&got_b),
        "both gateways deliver the same order"
    );
    // Each sender's own messages keep their send order.
    let order_of = |prefix: &str| -> Vec<String> {
        got_a
            .iter()
            .map(|m| m["message"].as_str().unwrap().to_owned())
            .filter(|t| t.starts_with(prefix))
            .collect()
    };
    assert_eq!(
        order_of("a"),
        (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        order_of("b"),
        (0..10).map(|i| format!("b{i}")).collect::<Vec<_>>()
    );
    for m in &got_a {
        assert_uuid_v7(&m["id"]);
        assert_timestamp(&m["timestamp"]);
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["username"], "tester");
    }
    // Acks carry the client_id and the id that was delivered.
    for (i, ack) in acks_a.iter().enumerate() {
        assert_eq!(ack["client_id"], format!("ca{i}"));
        assert_uuid_v7(&ack["id"]);
        assert!(ids(&got_a).contains(&ack["id"].as_str().unwrap().to_owned()));
    }

    // History holds the same order, as the spec's JSON.
    let mut r = c.redis.conn().await;
    let stored: Vec<String> = r.lrange("messages:lobby", 0, -1).await.unwrap();
    let stored: Vec<Value> = stored
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert_eq!(ids(&stored), ids(&got_a));
    for m in &stored {
        let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "id",
                "message",
                "room",
                "seq",
                "timestamp",
                "user_id",
                "username"
            ]
        );
    }

    // The other room saw nothing: its first frame is its own marker, seq 1.
    other.say("elsewhere", "marker", "m").await;
    let first = other.messages(1).await;
    assert_eq!(first[0]["message"], "marker");
    assert_eq!(first[0]["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_history_and_redis_bookkeeping() {
    let c = cluster(&[("HISTORY_ON_JOIN", "3")]).await;
    let (mut a, _) = Client::join(&c.gw1.ws_url("room=hist")).await;
    for i in 1..=5 {
        a.say("hist", &format!("m{i}"), &format!("c{i}")).await;
    }
    a.messages(5).await;

    let (b, h) = Client::join(&c.gw2.ws_url("room=hist&username=late")).await;
    let texts: Vec<&str> = h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m3", "m4", "m5"], "last N, oldest first");
    assert_eq!(h["data"]["latest_seq"], 5);

    let mut r = c.redis.conn().await;
    let active: Vec<String> = r.smembers("rooms:active").await.unwrap();
    assert!(active.contains(&"hist".to_owned()));
    let mut members: Vec<String> = r.smembers("connections:hist").await.unwrap();
    members.sort();
    assert_eq!(members.len(), 2);
    assert!(
        members[0].starts_with("gw1/") && members[1].starts_with("gw2/"),
        "{members:?}"
    );

    // Disconnecting removes the member.
    b.close().await;
    eventually("member of closed connection removed", DEADLINE, || {
        let mut r = r.clone();
        async move {
            let m: Vec<String> = r.smembers("connections:hist").await.ok()?;
            (m.len() == 1 && m[0].starts_with("gw1/")).then_some(())
        }
    })
    .await;

    // The HTTP history page agrees.
    let (status, body) = http_get(&c.gw1.addr(), "/rooms/hist/messages?limit=2&before_seq=5")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    let s: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(s, [3, 4]);
    let (status, body) = http_get(&c.gw1.addr(), "/rooms/hist/messages?limit=zero")
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "invalid_parameter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_errors_and_the_connection_lives_on() {
    let c = cluster(&[("MAX_MESSAGE_LEN", "100")]).await;
    // Refused before the upgrade.
    for q in [
        "",
        "room=",
        "room=a%20b",
        "room=%7Bx%7D",
        &format!("room={}", "x".repeat(65)),
    ] {
        let (status, body) = http_get(&c.gw1.addr(), &format!("/ws?{q}")).await.unwrap();
        assert_eq!(status, 400, "query {q:?}");
        let v: Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(v["error"]["code"], "invalid_room");
        assert!(v["error"]["message"].is_string());
    }
    let (status, _) = http_get(&c.gw1.addr(), "/ws?room=ok&username=%0A")
        .await
        .unwrap();
    assert_eq!(status, 400);

    let (mut a, _) = Client::join(&c.gw1.ws_url("room=bad")).await;
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "bad_json"),
        ("{\"type\":".into(), "bad_json"),
        (
            json!({"type":"shout","data":{}}).to_string(),
            "unknown_type",
        ),
        (json!({"type":"message"}).to_string(), "bad_frame"),
        (
            json!({"type":"message","data":{"room":"bad","message":7}}).to_string(),
            "bad_frame",
        ),
        (
            json!({"type":"message","data":{"room":"other","message":"x","client_id":"k"}})
                .to_string(),
            "room_mismatch",
        ),
        (
            json!({"type":"message","data":{"room":"b d","message":"x"}}).to_string(),
            "invalid_room",
        ),
        (
            json!({"type":"message","data":{"room":"bad","message":""}}).to_string(),
            "empty_message",
        ),
        (
            json!({"type":"message","data":{"room":"bad","message":"x".repeat(101)}}).to_string(),
            "message_too_long",
        ),
        (
            json!({"type":"message","data":{"room":"bad","message":"x","username":"a\u{1}"}})
                .to_string(),
            "invalid_username",
        ),
        (
            json!({"type":"message","data":{"room":"bad","message":"x".repeat(70_000)}})
                .to_string(),
            "frame_too_large",
        ),
    ];
    for (frame, code) in &cases {
        a.send_text(frame).await;
        let f = a.next_json().await;
        assert_eq!(f["type"], "error", "for {frame:.60}");
        assert_eq!(f["data"]["code"], *code, "for {frame:.60}");
        assert!(f["data"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    a.send_raw(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let f = a.next_json().await;
    assert_eq!(f["data"]["code"], "binary_not_supported");
    // The error echoes client_id when it could be read.
    a.send_text(
        &json!({"type":"message","data":{"room":"nope","message":"x","client_id":"echo-me"}})
            .to_string(),
    )
    .await;
    assert_eq!(a.next_json().await["data"]["client_id"], "echo-me");

    // Still alive: a valid message is acked and delivered.
    a.say("bad", "still here", "ok1").await;
    let ack = a.next_of_type("ack").await;
    assert_eq!(ack["data"]["client_id"], "ok1");
    let m = a.messages(1).await;
    assert_eq!(m[0]["message"], "still here");
    assert_eq!(m[0]["seq"], 1, "no rejected frame reached history");

    // Above the hard limit the socket is closed with 1009, the process lives.
    let (mut big, _) = Client::join(&c.gw1.ws_url("room=bad")).await;
    let _ = big
        .send_raw(Message::Text("x".repeat(2 * 1024 * 1024).into()))
        .await;
    let closed = big.wait_closed(DEADLINE).await;
    assert_eq!(
        closed.map(|c| c.0),
        Some(1009),
        "oversized message closes with 1009"
    );
    let (status, _) = http_get(&c.gw1.addr(), "/health").await.unwrap();
    assert_eq!(status, 200);
    a.say("bad", "after the big one", "ok2").await;
    assert_eq!(a.next_of_type("ack").await["data"]["client_id"], "ok2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_rate_limited_with_errors_not_drops() {
    let c = cluster(&[("RATE_LIMIT_PER_SEC", "1"), ("RATE_LIMIT_BURST", "5")]).await;
    let (mut a, _) = Client::join(&c.gw2.ws_url("room=flood")).await;
    for i in 0..20 {
        a.say("flood", "spam", &format!("f{i}")).await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 20 {
        let f = a.next_json().await;
        match (f["type"].as_str().unwrap(), f["data"]["code"].as_str()) {
            ("ack", _) => acks += 1,
            ("error", Some("rate_limited")) => limited += 1,
            ("message", _) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (5..=6).contains(&acks),
        "burst of 5 (plus at most one refill), got {acks}"
    );
    assert_eq!(limited, 20 - acks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_redis_and_recovers_without_restart() {
    let mut c = cluster(&[]).await;
    let (status, body) = http_get(&c.gw1.addr(), "/health").await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["redis"], "ok");
    assert_eq!(v["gateway_id"], "gw1");
    assert_eq!(v["connections"], 0);
    let (mut a, _) = Client::join(&c.gw1.ws_url("room=h")).await;
    let addr = c.gw1.addr();
    eventually("health counts the connection", DEADLINE, || {
        let addr = addr.clone();
        async move {
            let (_, body) = http_get(&addr, "/health").await.ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["connections"] == 1).then_some(())
        }
    })
    .await;

    c.redis.stop();
    eventually("health is 503 without Redis", DEADLINE, || {
        let addr = addr.clone();
        async move { (http_get(&addr, "/health").await.ok()?.0 == 503).then_some(()) }
    })
    .await;
    // A message that cannot be stored gets `unavailable`, never an ack.
    a.say("h", "lost?", "u1").await;
    let f = a.next_json().await;
    assert_eq!(f["type"], "error");
    assert_eq!(f["data"]["code"], "unavailable");
    assert_eq!(f["data"]["client_id"], "u1");

    c.redis.restart().await;
    eventually("health is 200 again", DEADLINE, || {
        let addr = addr.clone();
        async move { (http_get(&addr, "/health").await.ok()?.0 == 200).then_some(()) }
    })
    .await;
    // Service resumes by itself: a new client on the other gateway gets messages.
    let (mut b, _) = Client::join(&c.gw2.ws_url("room=h2")).await;
    // The documented client behaviour: `unavailable` means "not stored, retry".
    let mut attempt = 0;
    loop {
        attempt += 1;
        b.say("h2", "back", &format!("r{attempt}")).await;
        let f = b.next_json().await;
        if f["type"] == "ack" {
            break;
        }
        assert_eq!(f["data"]["code"], "unavailable", "{f}");
        assert!(attempt < 10, "still unavailable after {attempt} attempts");
    }
    let got = b.messages(1).await;
    assert_eq!(got[0]["message"], "back");
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_since_gets_exactly_the_missed_messages() {
    let c = cluster(&[]).await;
    let (mut a, _) = Client::join(&c.gw1.ws_url("room=rec")).await;
    for i in 1..=4 {
        a.say("rec", &format!("m{i}"), &format!("c{i}")).await;
    }
    let first = a.messages(4).await;
    let epoch = {
        let (_, h) = Client::join(&c.gw1.ws_url("room=rec")).await;
        h["data"]["epoch"].as_str().unwrap().to_owned()
    };
    a.close().await;
    // Messages sent while "a" is away.
    let (mut b, _) = Client::join(&c.gw2.ws_url("room=rec")).await;
    for i in 5..=7 {
        b.say("rec", &format!("m{i}"), &format!("d{i}")).await;
    }
    b.messages(3).await;
    let since = first.last().unwrap()["seq"].as_u64().unwrap();
    let (mut a2, h) = Client::join(
        &c.gw2
            .ws_url(&format!("room=rec&since={since}&epoch={epoch}")),
    )
    .await;
    let s: Vec<u64> = h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(s, [5, 6, 7]);
    assert!(h["data"].get("reset").is_none());
    // Then live, with no gap.
    b.say("rec", "m8", "d8").await;
    assert_eq!(a2.messages(1).await[0]["seq"], 8);
    // A stale epoch is reported instead of a wrong range.
    let (_, h) = Client::join(&c.gw1.ws_url("room=rec&since=3&epoch=stale")).await;
    assert_eq!(h["data"]["reset"], "epoch_changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_histories_arrive_in_several_frames() {
    let c = cluster(&[("RATE_LIMIT_BURST", "100")]).await;
    let (mut a, _) = Client::join(&c.gw1.ws_url("room=big")).await;
    // Control characters are escaped to 6 bytes each: 50 x 24 KB of history.
    let text = "\u{1}".repeat(4096);
    for i in 0..50 {
        a.say("big", &text, &format!("b{i}")).await;
    }
    a.messages(50).await;
    let (mut b, first) = Client::join(&c.gw2.ws_url("room=big")).await;
    let mut frames = vec![first];
    while frames.last().unwrap()["data"]["more"] == true {
        frames.push(b.next_of_type("history").await);
    }
    assert!(frames.len() > 1, "split into several frames");
    let seqs: Vec<u64> = frames
        .iter()
        .flat_map(|f| f["data"]["messages"].as_array().unwrap().clone())
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=50).collect::<Vec<_>>(),
        "all of it, oldest first, once"
    );
    // Recovery over the whole range works too, and so does a history request.
    let (_, h) = Client::join(&c.gw1.ws_url("room=big&since=0")).await;
    assert!(h["data"]["messages"].as_array().unwrap().len() < 50);
    b.send_text(r#"{"type":"history","data":{"limit":50}}"#)
        .await;
    assert_eq!(b.next_of_type("history").await["data"]["more"], true);
    b.say("big", "still open", "z").await;
    assert_eq!(b.next_of_type("ack").await["data"]["client_id"], "z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_ranges_stay_exact_after_trimming() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[("HISTORY_LIMIT", "5")]).await;
    let gw = start_gateway(&redis.url(), "gw1", &[]).await;
    let (mut a, _) = Client::join(&gw.ws_url("room=trim")).await;
    for i in 1..=12 {
        a.say("trim", &format!("m{i}"), &format!("c{i}")).await;
    }
    a.messages(12).await;
    let page = |q: &'static str| {
        let addr = gw.addr();
        async move {
            let (status, body) = http_get(&addr, &format!("/rooms/trim/messages?{q}"))
                .await
                .unwrap();
            assert_eq!(status, 200, "{q}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["oldest_seq"], 8, "{q}");
            assert_eq!(v["latest_seq"], 12, "{q}");
            seqs(v["messages"].as_array().unwrap())
        }
    };
    assert_eq!(page("limit=3").await, [10, 11, 12]);
    assert_eq!(page("limit=2&before_seq=11").await, [9, 10]);
    assert_eq!(page("limit=5&before_seq=9").await, [8]);
    assert!(page("limit=5&before_seq=8").await.is_empty());
    // Recovery from before the retained range is flagged as truncated.
    let (_, h) = Client::join(&gw.ws_url("room=trim&since=3")).await;
    assert_eq!(
        seqs(h["data"]["messages"].as_array().unwrap()),
        [8, 9, 10, 11, 12]
    );
    assert_eq!(h["data"]["truncated"], true);
    let (_, h) = Client::join(&gw.ws_url("room=trim&since=10")).await;
    assert_eq!(seqs(h["data"]["messages"].as_array().unwrap()), [11, 12]);
    assert!(h["data"].get("truncated").is_none());
    // A history request over the socket uses the same ranges.
    a.send_text(r#"{"type":"history","data":{"limit":2,"before_seq":12}}"#)
        .await;
    let h = a.next_of_type("history").await;
    assert_eq!(seqs(h["data"]["messages"].as_array().unwrap()), [10, 11]);
}
