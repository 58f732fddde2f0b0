//! Identity and access against real processes: every refusal before the
//! upgrade with its status and code, names and user ids from tokens, token
//! expiry and refresh, the per-user budget shared by gateways, the HTTP
//! publish API in one order with WebSocket senders, and RS256 keys.

mod common;

use std::time::{Duration, Instant};

use chat_tests::http_request;
use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// 32 bytes or more: the shortest `JWT_SECRET` the gateway accepts.
const SECRET: &str = "test-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An HS256 token signed with `secret`.
fn mint(secret: &str, claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `sub` with the test issuer and audience.
fn token(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 600, "iss": "app", "aud": "chat"});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    mint(SECRET, claims)
}

const AUTH: &[(&str, &str)] = &[
    ("JWT_SECRET", SECRET),
    ("JWT_ISSUER", "app"),
    ("JWT_AUDIENCE", "chat"),
    ("RATE_LIMIT_PER_SEC", "10000"),
    ("RATE_LIMIT_BURST", "10000"),
];

/// Asserts that opening `url` is refused with `status` and `code`.
async fn refused(url: &str, headers: &[(&str, &str)], status: u16, code: &str) {
    match open(url, headers).await {
        Ok(_) => panic!("{url} was accepted; expected {status} {code}"),
        Err((s, body)) => {
            assert_eq!(s, status, "{url}: {body}");
            assert_eq!(body["error"]["code"], code, "{url}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_gets_its_status_and_code() {
    let redis = Redis::start().await;
    let env = [
        AUTH,
        &[
            ("ALLOWED_ORIGINS", "https://chat.example"),
            ("MAX_CONNECTIONS_PER_IP", "2"),
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    ]
    .concat();
    let gw = start_gateway(&redis.url(), "gw1", &env).await;
    let url = |q: &str| gw.ws_url(q);
    let ok = token("u1", json!({"rooms": ["lobby", "team-*"]}));

    refused(&url("room=lobby"), &[], 401, "unauthorized").await;
    let bad_sig = mint(
        "wrong",
        json!({"sub":"u1","exp":now()+600,"iss":"app","aud":"chat"}),
    );
    refused(
        &url(&format!("room=lobby&token={bad_sig}")),
        &[],
        401,
        "unauthorized",
    )
    .await;
    let expired = token("u1", json!({"exp": now() - 10}));
    refused(
        &url(&format!("room=lobby&token={expired}")),
        &[],
        401,
        "unauthorized",
    )
    .await;
    let wrong_iss = token("u1", json!({"iss": "evil"}));
    refused(
        &url(&format!("room=lobby&token={wrong_iss}")),
        &[],
        401,
        "unauthorized",
    )
    .await;
    let wrong_aud = token("u1", json!({"aud": "other"}));
    refused(
        &url(&format!("room=lobby&token={wrong_aud}")),
        &[],
        401,
        "unauthorized",
    )
    .await;
    refused(
        &url(&format!("room=secret&token={ok}")),
        &[],
        403,
        "forbidden",
    )
    .await;
    refused(
        &url(&format!("room=lobby&token={ok}&username=mallory")),
        &[],
        403,
        "forbidden",
    )
    .await;
    refused(
        &url(&format!("room=lobby&token={ok}")),
        &[("Origin", "https://evil.example")],
        403,
        "forbidden_origin",
    )
    .await;
    // Allowed: a prefix room, the right Origin, and the token as a header.
    let _a = open(
        &url("room=team-red"),
        &[
            ("Origin", "https://chat.example"),
            ("Authorization", &format!("Bearer {ok}")),
        ],
    )
    .await
    .expect("allowed");

    // The peer (127.0.0.1) is a trusted proxy: the client is the first
    // untrusted hop of X-Forwarded-For, read from the right.
    let via = |ip: &'static str| [("X-Forwarded-For", ip), ("Authorization", "")];
    let bearer = format!("Bearer {ok}");
    let hdrs = |ip: &'static str| {
        let mut h = via(ip).to_vec();
        h[1].1 = bearer.as_str();
        h
    };
    let _c1 = open(&url("room=lobby"), &hdrs("203.0.113.9"))
        .await
        .unwrap();
    let _c2 = open(&url("room=lobby"), &hdrs("198.51.100.1, 203.0.113.9"))
        .await
        .unwrap();
    refused(
        &url("room=lobby"),
        &hdrs("203.0.113.9"),
        429,
        "too_many_connections",
    )
    .await;
    let _other = open(&url("room=lobby"), &hdrs("203.0.113.10"))
        .await
        .unwrap();
    let rejected = metric(
        &gw.addr(),
        "chat_gateway_connections_rejected_total{code=\"too_many_connections\",transport=\"ws\"}",
    )
    .await;
    assert_eq!(rejected, Some(1.0));

    // Without trusted proxies the header is ignored: the peer is the client.
    let plain = [AUTH, &[("MAX_CONNECTIONS_PER_IP", "2")]].concat();
    let gw2 = start_gateway(&redis.url(), "gw2", &plain).await;
    let _d1 = open(&gw2.ws_url("room=lobby"), &hdrs("203.0.113.1"))
        .await
        .unwrap();
    let _d2 = open(&gw2.ws_url("room=lobby"), &hdrs("203.0.113.2"))
        .await
        .unwrap();
    refused(
        &gw2.ws_url("room=lobby"),
        &hdrs("203.0.113.3"),
        429,
        "too_many_connections",
    )
    .await;
    drop(_d1);
    eventually("a slot is free again", DEADLINE, || {
        let u = gw2.ws_url("room=lobby");
        let h = hdrs("203.0.113.4");
        async move { open(&u, &h).await.ok().map(|_| ()) }
    })
    .await;
}

/// Next frame of `kind` (skipping others).
async fn next_of(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kind: &str,
) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end
            .checked_duration_since(Instant::now())
            .expect("frame before the deadline");
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("frame before the deadline")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

async fn send(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    frame: Value,
) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_users_chat_across_gateways_under_their_token_names() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw1 = start_gateway(&redis.url(), "gw1", AUTH).await;
    let gw2 = start_gateway(&redis.url(), "gw2", AUTH).await;
    let ana = token("u-ana", json!({"name": "Ana"}));
    let bo = token("u-bo", json!({}));
    let mut a = open(&gw1.ws_url(&format!("room=lobby&token={ana}")), &[])
        .await
        .unwrap();
    let mut b = open(&gw2.ws_url(&format!("room=lobby&token={bo}")), &[])
        .await
        .unwrap();
    next_of(&mut a, "history").await;
    next_of(&mut b, "history").await;

    send(
        &mut a,
        json!({"type":"message","data":{"room":"lobby","message":"hi","client_id":"a1"}}),
    )
    .await;
    let seen = next_of(&mut b, "message").await;
    assert_eq!(seen["data"]["username"], "Ana");
    assert_eq!(seen["data"]["user_id"], "u-ana");
    assert_eq!(seen["data"]["seq"], 1);
    // The sender gets its own message too.
    assert_eq!(next_of(&mut a, "message").await["data"]["seq"], 1);
    // The token's name, given explicitly, is fine; another is forged.
    send(
        &mut b,
        json!({"type":"message","data":{"room":"lobby","message":"yo","username":"u-bo"}}),
    )
    .await;
    let seen = next_of(&mut a, "message").await;
    assert_eq!(seen["data"]["username"], "u-bo", "name defaults to sub");
    assert_eq!(seen["data"]["user_id"], "u-bo");
    send(&mut b, json!({"type":"message","data":{"room":"lobby","message":"fake","username":"Ana","client_id":"f1"}})).await;
    let err = next_of(&mut b, "error").await;
    assert_eq!(err["data"]["code"], "forbidden");
    assert_eq!(err["data"]["client_id"], "f1");
    // A later message is seq 3: the forged one was not stored.
    send(
        &mut a,
        json!({"type":"message","data":{"room":"lobby","message":"after"}}),
    )
    .await;
    // b's own "yo" may still be on its way; skip to "after".
    let seen = loop {
        let m = next_of(&mut b, "message").await;
        if m["data"]["message"] == "after" {
            break m;
        }
    };
    assert_eq!(seen["data"]["seq"], 3);
    let mut c = redis.conn().await;
    let stored: Vec<String> = c.lrange("messages:lobby", 0, -1).await.unwrap();
    let stored: Vec<Value> = stored
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0]["user_id"], "u-ana");
    assert_eq!(stored[0]["username"], "Ana");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_with_4001_and_a_refresh_keeps_the_connection() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw = start_gateway(&redis.url(), "gw1", AUTH).await;
    let short = token("u1", json!({"exp": now() + 2}));
    let mut expiring = Client::connect(&gw.ws_url(&format!("room=r&token={short}"))).await;
    let closed = expiring.wait_closed(Duration::from_secs(10)).await;
    assert_eq!(closed.map(|c| c.0), Some(4001));
    assert_eq!(expiring.closed.unwrap().1, "token expired");

    let short = token("u1", json!({"exp": now() + 2}));
    let started = Instant::now();
    let mut ws = open(&gw.ws_url(&format!("room=r&token={short}")), &[])
        .await
        .unwrap();
    next_of(&mut ws, "history").await;
    let other = token("u2", json!({}));
    send(&mut ws, json!({"type":"refresh","data":{"token": other}})).await;
    assert_eq!(next_of(&mut ws, "error").await["data"]["code"], "forbidden");
    let long = token("u1", json!({}));
    send(&mut ws, json!({"type":"refresh","data":{"token": long}})).await;
    // Past the first token's expiry the connection still works.
    while started.elapsed() < Duration::from_secs(4) {
        send(
            &mut ws,
            json!({"type":"message","data":{"room":"r","message":"still here","client_id":"s"}}),
        )
        .await;
        assert_eq!(next_of(&mut ws, "ack").await["data"]["client_id"], "s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_on_two_gateways_spends_one_budget() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    // Three messages, then one every 100 s: nothing refills during the test.
    let env = [
        AUTH,
        &[
            ("USER_RATE_LIMIT_PER_SEC", "0.01"),
            ("USER_RATE_LIMIT_BURST", "3"),
        ],
    ]
    .concat();
    let gw1 = start_gateway(&redis.url(), "gw1", &env).await;
    let gw2 = start_gateway(&redis.url(), "gw2", &env).await;
    let t = token("u1", json!({}));
    let mut a = open(&gw1.ws_url(&format!("room=r&token={t}")), &[])
        .await
        .unwrap();
    let mut b = open(&gw2.ws_url(&format!("room=r&token={t}")), &[])
        .await
        .unwrap();
    for i in 0..3 {
        let ws = if i == 1 { &mut b } else { &mut a };
        send(
            ws,
            json!({"type":"message","data":{"room":"r","message":"m","client_id":format!("c{i}")}}),
        )
        .await;
        assert_eq!(
            next_of(ws, "ack").await["data"]["client_id"],
            format!("c{i}")
        );
    }
    send(
        &mut b,
        json!({"type":"message","data":{"room":"r","message":"m","client_id":"over"}}),
    )
    .await;
    let err = next_of(&mut b, "error").await;
    assert_eq!(err["data"]["code"], "rate_limited");
    assert_eq!(err["data"]["client_id"], "over");
    // Another user has a budget of its own.
    let t2 = token("u2", json!({}));
    let mut c = open(&gw2.ws_url(&format!("room=r&token={t2}")), &[])
        .await
        .unwrap();
    send(
        &mut c,
        json!({"type":"message","data":{"room":"r","message":"m","client_id":"u2"}}),
    )
    .await;
    assert_eq!(next_of(&mut c, "ack").await["data"]["client_id"], "u2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_shares_one_order_with_websocket_senders() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let env = [
        // A named key and a bare one (named after its position: key2).
        ("API_KEYS", "bot:k-one, k-two"),
        ("RATE_LIMIT_PER_SEC", "10000"),
        ("RATE_LIMIT_BURST", "10000"),
    ];
    let gw = start_gateway(&redis.url(), "gw1", &env).await;
    let (mut reader, _) = Client::join(&gw.ws_url("room=mixed")).await;
    let mut sender = Client::connect(&gw.ws_url("room=mixed&username=ws")).await;
    let post = |body: Value, key: &'static str| {
        let addr = gw.addr();
        async move {
            let auth = format!("Bearer {key}");
            http_request(
                &addr,
                "POST",
                "/rooms/mixed/messages",
                &[("Authorization", &auth)],
                &body.to_string(),
            )
            .await
            .unwrap()
        }
    };
    let mut ids = Vec::new();
    for i in 0..10 {
        sender
            .say("mixed", &format!("ws-{i}"), &format!("w{i}"))
            .await;
        let ack = sender.next_of_type("ack").await;
        ids.push(ack["data"]["id"].as_str().unwrap().to_owned());
        let key = if i % 2 == 0 { "k-one" } else { "k-two" };
        let (status, body) = post(
            json!({"message": format!("api-{i}"), "username": "bot", "client_id": format!("h{i}")}),
            key,
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["client_id"], format!("h{i}"));
        assert_timestamp(&body["timestamp"]);
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let got = reader.messages(20).await;
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let got_ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids, "one order: the order of acks and 201s");
    assert_eq!(got[1]["username"], "bot");
    // Each key's messages (every second one) carry its user id, delivered
    // and stored; the WebSocket sender's never claim an API key's.
    let user_ids = |msgs: &[Value]| -> Vec<String> {
        msgs.iter()
            .map(|m| m["user_id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let want: Vec<&str> = (0..10)
        .map(|i| if i % 2 == 0 { "api:bot" } else { "api:key2" })
        .collect();
    let stored = eventually("the 20 messages are stored", DEADLINE, || async {
        let records = stored_records(&redis, "mixed").await;
        (records.len() == 20).then_some(records)
    })
    .await;
    for (what, msgs) in [("delivered", &got), ("stored", &stored)] {
        let ids = user_ids(msgs);
        let api: Vec<&str> = ids.iter().skip(1).step_by(2).map(String::as_str).collect();
        assert_eq!(api, want, "{what} user ids of API messages");
        assert!(
            ids.iter().step_by(2).all(|id| !id.starts_with("api:")),
            "{what}: {ids:?}"
        );
    }

    // A resend with the same client_id is the same message.
    let (status, body) = post(
        json!({"message": "api-0", "username": "bot", "client_id": "h0"}),
        "k-one",
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["id"],
        ids[1].as_str()
    );

    for (body, key, status, code) in [
        ("not json".to_owned(), "k-one", 400, "bad_json"),
        (
            json!({"message": ""}).to_string(),
            "k-one",
            400,
            "empty_message",
        ),
        (
            json!({"message": "x", "username": ""}).to_string(),
            "k-one",
            400,
            "invalid_username",
        ),
        (
            json!({"message": "x"}).to_string(),
            "wrong",
            401,
            "unauthorized",
        ),
    ] {
        let auth = format!("Bearer {key}");
        let (s, b) = http_request(
            &gw.addr(),
            "POST",
            "/rooms/mixed/messages",
            &[("Authorization", &auth)],
            &body,
        )
        .await
        .unwrap();
        assert_eq!(s, status, "{b}");
        assert_eq!(
            serde_json::from_str::<Value>(&b).unwrap()["error"]["code"],
            code
        );
    }
    let (s, _) = http_request(
        &gw.addr(),
        "POST",
        "/rooms/mixed/messages",
        &[],
        "{\"message\":\"x\"}",
    )
    .await
    .unwrap();
    assert_eq!(s, 401, "no key at all");
    // A gateway without keys: a key is no credential there (401; wave 2
    // answered 404, wave 3's HTTP sending made the route always exist).
    let bare = start_gateway(&redis.url(), "gw2", &[]).await;
    let (s, b) = http_request(
        &bare.addr(),
        "POST",
        "/rooms/mixed/messages",
        &[("Authorization", "Bearer k-one")],
        "{\"message\":\"x\"}",
    )
    .await
    .unwrap();
    assert_eq!(s, 401, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_verify_against_a_generated_key_pair() {
    let dir = scratch_dir("rs256");
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl generated the key pair");
    let redis = Redis::start().await;
    let public_path = public.to_string_lossy().into_owned();
    let gw = start_gateway(
        &redis.url(),
        "gw1",
        &[("JWT_PUBLIC_KEY_FILE", &public_path)],
    )
    .await;
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let t = encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "u1", "exp": now() + 600, "name": "Rsa"}),
        &key,
    )
    .unwrap();
    let mut ws = open(&gw.ws_url(&format!("room=r&token={t}")), &[])
        .await
        .unwrap();
    next_of(&mut ws, "history").await;
    // An HS256 token (signed with the public key as a secret) is refused.
    let forged = mint(
        &std::fs::read_to_string(&public).unwrap(),
        json!({"sub":"u1","exp":now()+600}),
    );
    refused(
        &gw.ws_url(&format!("room=r&token={forged}")),
        &[],
        401,
        "unauthorized",
    )
    .await;
}
