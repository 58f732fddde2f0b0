//! The ephemeral room features against real processes: presence (HTTP and
//! WS), `join` / `leave` across gateways, with two tabs and after a gateway
//! SIGKILL, `typing` to the others only and thinned, read receipts that
//! never go down, their errors, `PRESENCE_EVENTS=false`, and the same on a
//! 3-master Redis Cluster.
//!
//! "Nothing was sent" is asserted without sleeping: each test waits for a
//! later frame whose publication is ordered after the one that must not
//! exist (the same gateway channel delivers in publish order), then looks at
//! everything received before it.

mod common;

use common::*;
use redis::AsyncCommands;
use serde_json::{json, Value};

const GW: &[(&str, &str)] = FAST_GW;
const WORKER: &[(&str, &str)] = FAST_WORKER;

/// Frames received until one matches `stop` (included), in order.
async fn until(c: &mut Client, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = c.next_json().await;
        let done = stop(&v);
        seen.push(v);
        if done {
            return seen;
        }
    }
}

fn is(v: &Value, kind: &str, username: &str) -> bool {
    v["type"] == kind && v["data"]["username"] == username
}

fn count(frames: &[Value], kind: &str, username: &str) -> usize {
    frames.iter().filter(|v| is(v, kind, username)).count()
}

/// `GET /rooms/{room}/presence` as JSON.
async fn presence(gw: &Gateway, room: &str) -> Value {
    let (status, body) = http_get(&gw.addr(), &format!("/rooms/{room}/presence"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until the room's presence has `users` users.
async fn wait_users(gw: &Gateway, room: &str, users: u64) -> Value {
    eventually(&format!("{users} users in {room}"), DEADLINE, || async {
        let p = presence(gw, room).await;
        (p["count"] == users).then_some(p)
    })
    .await
}

/// Waits until the gateway counts `n` open connections. It counts a
/// connection out only after its deregistration and `leave` were published.
async fn wait_connections(gw: &Gateway, n: u64) {
    eventually(
        &format!("{} holds {n} connections", gw.id),
        DEADLINE,
        || async {
            let (_, body) = http_get(&gw.addr(), "/health").await.ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (v["connections"] == n).then_some(())
        },
    )
    .await;
}

/// Sends a chat message and returns when `c` has received it: a marker
/// ordered after every ephemeral event published before it.
async fn marker(c: &mut Client, room: &str, text: &str) -> Vec<Value> {
    c.say(room, text, text).await;
    until(c, |v| {
        v["type"] == "message" && v["data"]["message"] == text
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_and_join_leave_across_gateways_with_two_tabs() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw1 = start_gateway(&redis.url(), "g1", GW).await;
    let gw2 = start_gateway(&redis.url(), "g2", GW).await;

    let (mut bo, _) = Client::join_ephemeral(&gw2.ws_url("room=p&username=bo")).await;
    let (mut ana1, _) = Client::join_ephemeral(&gw1.ws_url("room=p&username=ana")).await;
    let seen = until(&mut bo, |v| is(v, "join", "ana")).await;
    assert_eq!(
        count(&seen, "join", "bo"),
        0,
        "bo was told of its own join: {seen:?}"
    );
    let join = seen.last().unwrap().clone();
    assert_eq!(join["data"]["room"], "p");
    assert_eq!(join["data"]["user_id"], Value::Null);
    assert_timestamp(&join["data"]["timestamp"]);

    // A second tab (on the other gateway) is the same user: no join.
    let (ana2, _) = Client::join_ephemeral(&gw2.ws_url("room=p&username=ana")).await;
    let p = eventually("ana with two connections", DEADLINE, || async {
        let p = presence(&gw1, "p").await;
        (p["users"][0]["connections"] == 2).then_some(p)
    })
    .await;
    assert_eq!(
        p,
        json!({"room":"p","count":2,"users":[
            {"username":"ana","user_id":null,"connections":2},
            {"username":"bo","user_id":null,"connections":1}
        ]})
    );
    // The WS request answers the requester with the same state.
    bo.send_text(r#"{"type":"presence"}"#).await;
    let ws = bo.next_of_type("presence").await;
    assert_eq!(ws["data"], p);

    // Closing one tab is no leave; closing the last one is.
    ana2.close().await;
    wait_connections(&gw2, 1).await;
    let seen = marker(&mut ana1, "p", "after-tab").await;
    assert_eq!(count(&seen, "leave", "ana"), 0, "{seen:?}");
    let seen = until(&mut bo, |v| v["data"]["message"] == "after-tab").await;
    assert_eq!(
        count(&seen, "join", "ana"),
        0,
        "second tab joined: {seen:?}"
    );
    assert_eq!(count(&seen, "leave", "ana"), 0, "first tab left: {seen:?}");
    assert_eq!(presence(&gw2, "p").await["users"][0]["connections"], 1);

    ana1.close().await;
    let leave = until(&mut bo, |v| is(v, "leave", "ana"))
        .await
        .pop()
        .unwrap();
    assert_eq!(leave["data"]["room"], "p");
    assert_timestamp(&leave["data"]["timestamp"]);
    let p = wait_users(&gw2, "p", 1).await;
    assert_eq!(p["users"][0]["username"], "bo");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gateways_users_leave_within_the_janitors_bound() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let mut gw1 = start_gateway(&redis.url(), "g1", GW).await;
    let gw2 = start_gateway(&redis.url(), "g2", GW).await;

    let (mut bo, _) = Client::join_ephemeral(&gw2.ws_url("room=k&username=bo")).await;
    // ana has one tab on each gateway, cy only one on the gateway that dies.
    let (_ana1, _) = Client::join_ephemeral(&gw1.ws_url("room=k&username=ana")).await;
    let (_cy, _) = Client::join_ephemeral(&gw1.ws_url("room=k&username=cy")).await;
    let (_ana2, _) = Client::join_ephemeral(&gw2.ws_url("room=k&username=ana")).await;
    wait_users(&gw2, "k", 3).await;

    gw1.proc.kill9();
    let seen = until(&mut bo, |v| is(v, "leave", "cy")).await;
    let p = wait_users(&gw2, "k", 2).await;
    assert_eq!(
        p["users"],
        json!([
            {"username":"ana","user_id":null,"connections":1},
            {"username":"bo","user_id":null,"connections":1}
        ])
    );
    // ana still has a tab: no leave for her, before or after cy's.
    let seen_after = marker(&mut bo, "k", "after-kill").await;
    assert_eq!(count(&seen, "leave", "ana"), 0, "{seen:?}");
    assert_eq!(count(&seen_after, "leave", "ana"), 0, "{seen_after:?}");

    // Redis holds nothing of the dead gateway.
    let mut c = redis.conn().await;
    let conns: Vec<String> = c
        .hkeys("chat:presence-conns:{connections:k}")
        .await
        .unwrap();
    assert!(conns.iter().all(|m| m.starts_with("g2/")), "{conns:?}");
    let users: std::collections::HashMap<String, i64> = c
        .hgetall("chat:presence-users:{connections:k}")
        .await
        .unwrap();
    assert_eq!(users.len(), 2, "{users:?}");
    assert_eq!(users["ana"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn typing_reaches_the_others_only_and_a_flood_is_thinned() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw1 = start_gateway(&redis.url(), "g1", GW).await;
    let gw2 = start_gateway(&redis.url(), "g2", GW).await;

    let (mut ana, _) = Client::join_ephemeral(&gw1.ws_url("room=t&username=ana")).await;
    let (mut ana_tab, _) = Client::join_ephemeral(&gw1.ws_url("room=t&username=ana")).await;
    let (mut bo, _) = Client::join_ephemeral(&gw2.ws_url("room=t&username=bo")).await;
    wait_users(&gw1, "t", 2).await;

    for _ in 0..20 {
        ana.send_text(r#"{"type":"typing","data":{"active":true}}"#)
            .await;
    }
    // The message is appended after every typing frame was published.
    let own = marker(&mut ana, "t", "done").await;
    assert_eq!(count(&own, "typing", "ana"), 0, "echoed: {own:?}");
    // Typing is outside the room's sequence: the first message is seq 1.
    assert_eq!(own.last().unwrap()["data"]["seq"], 1);
    for (who, c) in [("bo", &mut bo), ("ana's other tab", &mut ana_tab)] {
        let seen = until(c, |v| v["data"]["message"] == "done").await;
        let typing: Vec<&Value> = seen.iter().filter(|v| v["type"] == "typing").collect();
        assert!(
            (1..=2).contains(&typing.len()),
            "{who} got {} typing frames of 20",
            typing.len()
        );
        assert_eq!(
            typing[0],
            &json!({"type":"typing","data":{"room":"t","username":"ana","user_id":null,"active":true}})
        );
    }
    let dropped = metric(&gw1.addr(), "chat_gateway_typing_throttled_total")
        .await
        .unwrap_or(0.0);
    assert!(dropped >= 18.0, "throttled {dropped}");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_receipts_never_go_down_and_survive_reconnects() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw1 = start_gateway(&redis.url(), "g1", GW).await;
    let gw2 = start_gateway(&redis.url(), "g2", GW).await;

    let (mut ana, _) = Client::join_ephemeral(&gw1.ws_url("room=rr&username=ana")).await;
    let (mut bo, _) = Client::join_ephemeral(&gw2.ws_url("room=rr&username=bo")).await;
    for i in 1..=5 {
        ana.say("rr", &format!("m{i}"), &format!("c{i}")).await;
    }
    bo.messages(5).await;
    ana.messages(5).await;

    let read = |seq: i64| json!({"type":"read","data":{"seq":seq}}).to_string();
    for seq in [3, 2, 3, 5] {
        ana.send_text(&read(seq)).await;
    }
    // Every member gets the raises (the sender too), in order; lower or
    // equal receipts are ignored.
    for c in [&mut bo, &mut ana] {
        let seen = until(c, |v| v["type"] == "read" && v["data"]["seq"] == 5).await;
        let seqs: Vec<&Value> = seen
            .iter()
            .filter(|v| v["type"] == "read")
            .map(|v| &v["data"]["seq"])
            .collect();
        assert_eq!(seqs, [3, 5]);
        assert_eq!(
            seen.last().unwrap()["data"],
            json!({"room":"rr","username":"ana","user_id":null,"seq":5})
        );
    }

    // A new connection cannot lower it either.
    ana.close().await;
    let (mut ana, _) = Client::join_ephemeral(&gw2.ws_url("room=rr&username=ana")).await;
    ana.send_text(&read(4)).await;
    bo.send_text(&read(1)).await;
    let seen = until(&mut bo, |v| is(v, "read", "bo")).await;
    assert_eq!(count(&seen, "read", "ana"), 0, "{seen:?}");
    let (status, body) = http_get(&gw1.addr(), "/rooms/rr/reads").await.unwrap();
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"room":"rr","reads":{"ana":5,"bo":1}}));

    // Nothing ephemeral is stored in history.
    assert_eq!(stored_records(&redis, "rr").await.len(), 5);

    // The receipts expire with the room's history.
    let mut c = redis.conn().await;
    let state_ttl: i64 = c.pttl("chat:room:{messages:rr}").await.unwrap();
    let reads_ttl: i64 = c.pttl("chat:reads:{messages:rr}").await.unwrap();
    assert!(
        reads_ttl > 0 && reads_ttl <= state_ttl,
        "{reads_ttl} vs {state_ttl}"
    );

    // Bad input: an error frame each, and the connection stays open.
    let cases = [
        (read(6), "invalid_parameter"),
        (read(-1), "invalid_parameter"),
        (
            r#"{"type":"read","data":{"seq":"3"}}"#.into(),
            "invalid_parameter",
        ),
        (
            r#"{"type":"read","data":{"seq":1.5}}"#.into(),
            "invalid_parameter",
        ),
        (r#"{"type":"read","data":{}}"#.into(), "invalid_parameter"),
        (r#"{"type":"read","data":[]}"#.into(), "bad_frame"),
        (
            r#"{"type":"typing","data":{"active":"yes"}}"#.into(),
            "bad_frame",
        ),
        (r#"{"type":"typing","data":{}}"#.into(), "bad_frame"),
        (r#"{"type":"typing"}"#.into(), "bad_frame"),
    ];
    for (frame, code) in cases {
        ana.send_text(&frame).await;
        let err = ana.next_of_type("error").await;
        assert_eq!(err["data"]["code"], code, "{frame}");
        assert!(err["data"]["message"].is_string());
    }
    ana.send_text(r#"{"type":"presence"}"#).await;
    assert_eq!(ana.next_of_type("presence").await["data"]["count"], 2);
    let (status, _) = http_get(&gw1.addr(), "/rooms/bad%20room/reads")
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_events_off_sends_no_join_or_leave() {
    let redis = Redis::start().await;
    let off = [("PRESENCE_EVENTS", "false")];
    let _w = start_worker(&redis.url(), "w1", &[WORKER, &off].concat()).await;
    let gw1 = start_gateway(&redis.url(), "g1", &[GW, &off].concat()).await;
    let gw2 = start_gateway(&redis.url(), "g2", &[GW, &off].concat()).await;

    let (mut bo, _) = Client::join_ephemeral(&gw2.ws_url("room=off&username=bo")).await;
    let (ana, _) = Client::join_ephemeral(&gw1.ws_url("room=off&username=ana")).await;
    // Presence itself is kept.
    wait_users(&gw2, "off", 2).await;
    ana.close().await;
    wait_connections(&gw1, 0).await;
    wait_users(&gw2, "off", 1).await;
    let seen = marker(&mut bo, "off", "end").await;
    let presence_events: Vec<&Value> = seen
        .iter()
        .filter(|v| v["type"] == "join" || v["type"] == "leave")
        .collect();
    assert!(presence_events.is_empty(), "{presence_events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_the_user_key_is_the_token_subject() {
    const SECRET: &str = "presence-secret-presence-secret!";
    let token = |sub: &str, name: &str| {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        sign_token(SECRET, &json!({"sub": sub, "name": name, "exp": exp}))
    };
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let env = [GW, &[("JWT_SECRET", SECRET)]].concat();
    let gw = start_gateway(&redis.url(), "g1", &env).await;

    let url = |sub, name| gw.ws_url(&format!("room=au&token={}", token(sub, name)));
    let (mut a, _) = Client::join_ephemeral(&url("u1", "Ana")).await;
    // Same display name, other subject: another user.
    let (_b, _) = Client::join_ephemeral(&url("u2", "Ana")).await;
    let (_a2, _) = Client::join_ephemeral(&url("u1", "Ana")).await;
    let p = eventually("u1 with two connections", DEADLINE, || async {
        let p = presence(&gw, "au").await;
        (p["users"][0]["connections"] == 2).then_some(p)
    })
    .await;
    assert_eq!(
        p["users"],
        json!([
            {"username":"Ana","user_id":"u1","connections":2},
            {"username":"Ana","user_id":"u2","connections":1}
        ])
    );
    a.send_text(r#"{"type":"message","data":{"room":"au","message":"hello"}}"#)
        .await;
    a.messages(1).await;
    a.send_text(r#"{"type":"read","data":{"seq":1}}"#).await;
    let r = a.next_of_type("read").await;
    assert_eq!(r["data"]["user_id"], "u1");
    let (_, body) = http_get(&gw.addr(), "/rooms/au/reads").await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["reads"],
        json!({"u1":1})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_lost_in_redis_is_restored_with_the_connections() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", WORKER).await;
    let gw = start_gateway(&redis.url(), "g1", GW).await;
    let (mut bo, _) = Client::join_ephemeral(&gw.ws_url("room=re&username=bo")).await;
    let (_ana, _) = Client::join_ephemeral(&gw.ws_url("room=re&username=ana")).await;
    let (_ana2, _) = Client::join_ephemeral(&gw.ws_url("room=re&username=ana")).await;
    let before = eventually("ana with two connections", DEADLINE, || async {
        let p = presence(&gw, "re").await;
        (p["users"][0]["connections"] == 2).then_some(p)
    })
    .await;
    until(&mut bo, |v| is(v, "join", "ana")).await;

    // As after an eviction or a Redis that restarted empty: the gateway's
    // next heartbeat finds itself unknown and writes everything back.
    let mut c = redis.conn().await;
    let _: () = redis::pipe()
        .del("connections:re")
        .del("chat:room-gateways:{connections:re}")
        .del("chat:presence-conns:{connections:re}")
        .del("chat:presence-users:{connections:re}")
        .hdel("chat:gateways", "g1")
        .query_async(&mut c)
        .await
        .unwrap();
    let after = eventually("presence restored", DEADLINE, || async {
        let p = presence(&gw, "re").await;
        (p["count"] == 2 && p["users"][0]["connections"] == 2).then_some(p)
    })
    .await;
    assert_eq!(after, before);
    let users: std::collections::HashMap<String, i64> = c
        .hgetall("chat:presence-users:{connections:re}")
        .await
        .unwrap();
    assert_eq!(users, [("ana".into(), 2), ("bo".into(), 1)].into());
    // Users Redis had lost are announced again (once each).
    let seen = until(&mut bo, |v| is(v, "join", "ana")).await;
    assert_eq!(count(&seen, "join", "ana"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_presence_typing_and_receipts_cross_gateways() {
    let cluster = common::cluster::RedisCluster::start(3, 0).await;
    let url = cluster.url();
    let _w = start_worker(&url, "w1", &[("STREAM_SHARDS", "4")]).await;
    let gw1 = start_gateway(&url, "g1", GW).await;
    let gw2 = start_gateway(&url, "g2", GW).await;

    // Several rooms: their keys hash to different slots.
    for room in ["alpha", "bravo", "charlie"] {
        let q = |name: &str| format!("room={room}&username={name}");
        let (mut bo, _) = Client::join_ephemeral(&gw2.ws_url(&q("bo"))).await;
        let (mut ana, _) = Client::join_ephemeral(&gw1.ws_url(&q("ana"))).await;
        until(&mut bo, |v| is(v, "join", "ana")).await;
        assert_eq!(wait_users(&gw1, room, 2).await["count"], 2);

        ana.send_text(r#"{"type":"typing","data":{"active":true}}"#)
            .await;
        let typing = until(&mut bo, |v| is(v, "typing", "ana")).await;
        assert_eq!(typing.last().unwrap()["data"]["room"], room);

        marker(&mut ana, room, "m1").await;
        ana.send_text(r#"{"type":"read","data":{"seq":1}}"#).await;
        until(&mut bo, |v| is(v, "read", "ana")).await;
        let (_, body) = http_get(&gw2.addr(), &format!("/rooms/{room}/reads"))
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["reads"],
            json!({"ana":1})
        );

        ana.close().await;
        until(&mut bo, |v| is(v, "leave", "ana")).await;
        assert_eq!(
            wait_users(&gw2, room, 1).await["users"][0]["username"],
            "bo"
        );
    }
}
