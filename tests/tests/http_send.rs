//! Sending without a WebSocket, against real processes:
//! `POST /rooms/{room}/messages` as a token user (auth on) and as an
//! anonymous session (auth off) → 201 and the message delivered as that
//! user; no or bad credentials → 401 (also where no API key is configured);
//! `POST /rooms/{room}/events` answers each client frame as `/ws` would,
//! with the documented statuses (200, 204, 400, 401, 403, 404, 429).

mod common;

use chat_tests::http_request;
use common::sse::SseClient;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "http-send-secret-of-at-least-32-bytes!!";

/// `POST path` with an optional bearer: status and JSON body (`Null` for none).
async fn post(gw: &Gateway, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, text) = http_request(&gw.addr(), "POST", path, &headers, &body.to_string())
        .await
        .unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_user_sends_over_http() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let env = [FAST_GW, &[("JWT_SECRET", SECRET)]].concat();
    let gw = start_gateway(&redis.url(), "g1", &env).await;
    let ana = sign_token(
        SECRET,
        &json!({"sub":"ana-id","name":"Ana","rooms":["team-*"],"exp": jsonwebtoken::get_current_timestamp() + 600}),
    );
    let (mut member, _) = Client::join(&gw.ws_url(&format!(
        "room=team-a&token={}",
        user_token(SECRET, "bo", None)
    )))
    .await;

    let body = json!({"message": "hello over http", "client_id": "h1"});
    let (status, ack) = post(&gw, "/rooms/team-a/messages", Some(&ana), &body).await;
    assert_eq!(status, 201, "{ack}");
    assert_eq!(ack["client_id"], "h1");
    assert_uuid_v7(&ack["id"]);
    assert_timestamp(&ack["timestamp"]);
    let got = member.next_of_type("message").await;
    assert_eq!(got["data"]["id"], ack["id"]);
    assert_eq!(
        got["data"]["user_id"], "ana-id",
        "posted as the token's user"
    );
    assert_eq!(got["data"]["username"], "Ana");
    // The same client_id again is the same message (deduplicated), as on /ws.
    let (status, again) = post(&gw, "/rooms/team-a/messages", Some(&ana), &body).await;
    assert_eq!((status, &again["id"]), (201, &ack["id"]));
    // The token in the query works too; another name is forged.
    let (status, forged) = post(
        &gw,
        &format!("/rooms/team-a/messages?token={ana}"),
        None,
        &json!({"message": "x", "username": "Bo"}),
    )
    .await;
    assert_eq!(
        (status, forged["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{forged}"
    );
    for (what, bearer, path, want, code) in [
        (
            "no credentials",
            None,
            "/rooms/team-a/messages",
            401,
            "unauthorized",
        ),
        (
            "a bad token",
            Some("nope"),
            "/rooms/team-a/messages",
            401,
            "unauthorized",
        ),
        (
            "another room",
            Some(ana.as_str()),
            "/rooms/lobby/messages",
            403,
            "forbidden",
        ),
    ] {
        let (status, body) = post(&gw, path, bearer, &json!({"message": "x"})).await;
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(body["error"]["code"], code, "{what}");
    }
    // An input error is the /ws code with 400.
    let long = "x".repeat(5000);
    let (status, body) = post(
        &gw,
        "/rooms/team-a/messages",
        Some(&ana),
        &json!({"message": long}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("message_too_long"))
    );
    let stored = stored_records(&redis, "team-a").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_session_sends_over_http() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    // No API key configured: the route exists for sessions, 401 without one.
    let gw = start_gateway(&redis.url(), "g1", FAST_GW).await;
    let mut sse = SseClient::open(&gw.addr(), "room=anon&username=sam", None)
        .await
        .unwrap();
    let (_, session) = sse.next_of_type("session").await;
    let user = session["data"]["user_id"].as_str().unwrap().to_owned();
    let value = session["data"]["session"].as_str().unwrap().to_owned();

    let path = format!("/rooms/anon/messages?session={value}&username=sam");
    let (status, ack) = post(
        &gw,
        &path,
        None,
        &json!({"message": "hi", "client_id": "s1"}),
    )
    .await;
    assert_eq!(status, 201, "{ack}");
    let (_, got) = sse.next_of_type("message").await;
    assert_eq!(got["data"]["id"], ack["id"]);
    assert_eq!(
        got["data"]["user_id"],
        user.as_str(),
        "posted as the session's user"
    );
    assert_eq!(got["data"]["username"], "sam");
    // Without a session, with a tampered one, or a key where none is configured: 401.
    // Its last hex digit changed (to 0, or to 1 when it is 0 already: the
    // same value would be let in, 1 time in 16).
    let last = if value.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &value[..value.len() - 1]);
    for path in [
        "/rooms/anon/messages".to_owned(),
        format!("/rooms/anon/messages?session={tampered}"),
        format!("/rooms/anon/events?session={tampered}"),
    ] {
        let (status, body) = post(&gw, &path, None, &json!({"message": "x"})).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
    }
    let (status, _) = post(
        &gw,
        "/rooms/anon/messages",
        Some("some-key"),
        &json!({"message": "x"}),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(stored_records(&redis, "anon").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_answer_like_ws_with_their_statuses() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let env = [
        FAST_GW,
        &[
            ("USER_RATE_LIMIT_PER_SEC", "1"),
            ("USER_RATE_LIMIT_BURST", "30"),
        ],
    ]
    .concat();
    let gw = start_gateway(&redis.url(), "g1", &env).await;
    let (mut other, _) = Client::join_ephemeral(&gw.ws_url("room=ev&username=olga")).await;
    let theirs = other.acked(message_frame("ev", "olga's", "o1")).await;
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    let mut sse = SseClient::open(&gw.addr(), "room=ev&username=sam", None)
        .await
        .unwrap();
    let (_, session) = sse.next_of_type("session").await;
    let value = session["data"]["session"].as_str().unwrap().to_owned();
    let msgs = format!("/rooms/ev/messages?session={value}");
    let events = format!("/rooms/ev/events?session={value}");
    let (_, mine) = post(
        &gw,
        &msgs,
        None,
        &json!({"message": "mine", "client_id": "m1"}),
    )
    .await;
    let mine = mine["id"].as_str().unwrap().to_owned();

    let ev = |kind: &str, data: Value| json!({"type": kind, "data": data});
    // Acked room events: 200 with the ack frame.
    for (frame, client_id) in [
        (
            ev(
                "edit",
                json!({"id": mine, "message": "mine!", "client_id": "e1"}),
            ),
            "e1",
        ),
        (
            ev(
                "react",
                json!({"id": theirs, "emoji": "👍", "op": "add", "client_id": "r1"}),
            ),
            "r1",
        ),
    ] {
        let (status, ack) = post(&gw, &events, None, &frame).await;
        assert_eq!(status, 200, "{frame}: {ack}");
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["data"]["client_id"], client_id);
    }
    let (_, edit) = sse.next_of_type("edit").await;
    assert_eq!(edit["data"]["message"], "mine!");
    // Replies: presence and history frames.
    let (status, presence) = post(&gw, &events, None, &ev("presence", json!({}))).await;
    assert_eq!((status, presence["type"].as_str()), (200, Some("presence")));
    assert_eq!(presence["data"]["count"], 2, "{presence}");
    let (status, history) = post(&gw, &events, None, &ev("history", json!({"limit": 10}))).await;
    assert_eq!((status, history["type"].as_str()), (200, Some("history")));
    assert_eq!(history["data"]["messages"][1]["message"], "mine!");
    // Nothing back on /ws: 204. The other member sees the typing.
    let (status, body) = post(&gw, &events, None, &ev("typing", json!({"active": true}))).await;
    assert_eq!((status, body), (204, Value::Null));
    let typing = other.next_of_type("typing").await;
    assert_eq!(typing["data"]["username"], "anonymous");
    let (status, _) = post(&gw, &events, None, &ev("read", json!({"seq": 1}))).await;
    assert_eq!(status, 204);
    // Errors: the error frame with its status.
    for (frame, want, code) in [
        (
            ev(
                "edit",
                json!({"id": theirs, "message": "hijack", "client_id": "e2"}),
            ),
            403,
            "forbidden",
        ),
        (
            ev(
                "delete",
                json!({"id": "0190aaaa-0000-7000-8000-000000000000", "client_id": "d1"}),
            ),
            404,
            "not_found",
        ),
        (ev("refresh", json!({"token": "x"})), 400, "unknown_type"),
        (ev("nonsense", json!({})), 400, "unknown_type"),
        (ev("read", json!({"seq": 999})), 400, "invalid_parameter"),
        (
            ev(
                "edit",
                json!({"id": mine, "message": "", "client_id": "e3"}),
            ),
            400,
            "empty_message",
        ),
    ] {
        let (status, body) = post(&gw, &events, None, &frame).await;
        assert_eq!(status, want, "{frame}: {body}");
        assert_eq!(body["type"], "error", "{frame}");
        assert_eq!(body["data"]["code"], code, "{frame}");
    }
    let (status, body) = http_request(&gw.addr(), "POST", &events, &[], "{not json")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    // The user budget (USER_RATE_LIMIT_*) is the /ws one: 429 once spent.
    let mut limited = None;
    for i in 0..60 {
        let frame = ev(
            "edit",
            json!({"id": mine, "message": format!("v{i}"), "client_id": format!("v{i}")}),
        );
        let (status, body) = post(&gw, &events, None, &frame).await;
        if status != 200 {
            limited = Some((status, body));
            break;
        }
    }
    let (status, body) = limited.expect("the user budget runs out");
    assert_eq!(
        (status, body["data"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
}
