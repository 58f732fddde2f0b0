//! `GET /sse` against real processes: live frames are the `/ws` frames with
//! `id: <seq>`; `Last-Event-ID` resumes (over `since`), or gives a
//! `truncated` history when the gap was trimmed; refusals are `/ws`'s (401,
//! 403 `forbidden`, 403 `banned`); a reader that does not read is cut off as
//! a slow consumer; SSE and WebSocket members of one room, on two gateways,
//! see one order; a ban closes an open stream.

mod common;

use chat_tests::http_request;
use common::sse::SseClient;
use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const SECRET: &str = "sse-tests-secret-of-at-least-32-bytes!!";
const API_KEY: &str = "sse-key";

/// The `seq` of a message frame, as the SSE id should carry it.
fn seq(frame: &Value) -> String {
    frame["data"]["seq"].as_u64().expect("seq").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_frames_carry_ids_and_last_event_id_resumes() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let gw = start_gateway(&redis.url(), "g1", FAST_GW).await;

    let (mut ws, _) = Client::join(&gw.ws_url("room=live&username=wes")).await;
    let mut sse = SseClient::open(&gw.addr(), "room=live&username=sam", None)
        .await
        .expect("stream opens");
    assert_eq!(
        sse.headers["content-type"], "text/event-stream",
        "{:?}",
        sse.headers
    );
    // The join: an empty room's history (id: its latest seq, 0), then the
    // anonymous session (no id), exactly as /ws sends them.
    let (id, history) = sse.next_frame().await;
    assert_eq!(history["type"], "history");
    assert_eq!(id.as_deref(), Some("0"));
    let (id, session) = sse.next_frame().await;
    assert_eq!(session["type"], "session");
    assert_eq!(id, None);
    assert!(session["data"]["user_id"]
        .as_str()
        .unwrap()
        .starts_with("anon-"));

    let mut seen_by_ws = Vec::new();
    for i in 1..=3 {
        ws.send_text(&message_frame("live", &format!("m{i}"), &format!("c{i}")).to_string())
            .await;
    }
    while seen_by_ws.len() < 3 {
        let f = ws.next_of_type("message").await;
        seen_by_ws.push(f);
    }
    for want in &seen_by_ws {
        let (id, got) = sse.next_of_type("message").await;
        assert_eq!(&got, want, "the SSE data is the /ws frame");
        assert_eq!(id, Some(seq(want)), "id: <seq>");
    }
    // An edit is a seq'd room event: it carries its seq too.
    let target = seen_by_ws[0]["data"]["id"].as_str().unwrap().to_owned();
    ws.send_text(
        &json!({"type":"edit","data":{"room":"live","id":target,"message":"m1!","client_id":"e1"}})
            .to_string(),
    )
    .await;
    let (id, edit) = sse.next_of_type("edit").await;
    assert_eq!(id, Some(seq(&edit)));
    let last = id.unwrap();
    drop(sse);

    // Missed while away: two messages. A reconnect with Last-Event-ID gets
    // exactly them (since=0 in the URL is overridden by the header).
    for i in 4..=5 {
        ws.acked(message_frame("live", &format!("m{i}"), &format!("c{i}")))
            .await;
    }
    let mut back = SseClient::open(&gw.addr(), "room=live&since=0", Some(&last))
        .await
        .unwrap();
    let (id, history) = back.next_of_type("history").await;
    let texts: Vec<&str> = history["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m4", "m5"], "{history}");
    assert_eq!(history["data"]["truncated"], Value::Null);
    let newest = history["data"]["messages"][1]["seq"].as_u64().unwrap();
    assert_eq!(
        id,
        Some(newest.to_string()),
        "a history frame's id: its newest seq"
    );
    // A bad Last-Event-ID is refused like a bad since.
    let (status, body) = SseClient::open(&gw.addr(), "room=live", Some("x"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_parameter"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_gap_is_a_truncated_history() {
    let redis = Redis::start().await;
    let worker_env = [FAST_WORKER, &[("HISTORY_LIMIT", "3")]].concat();
    let _w = start_worker(&redis.url(), "w1", &worker_env).await;
    let gw = start_gateway(&redis.url(), "g1", FAST_GW).await;
    let (mut ws, _) = Client::join(&gw.ws_url("room=trim")).await;
    for i in 1..=8 {
        ws.acked(message_frame("trim", &format!("m{i}"), &format!("c{i}")))
            .await;
    }
    // Wait until the worker has persisted (and trimmed) all eight.
    eventually("history trimmed to 3", DEADLINE, || async {
        let records = stored_records(&redis, "trim").await;
        (records.len() == 3 && records[2]["seq"] == 8).then_some(())
    })
    .await;
    let mut sse = SseClient::open(&gw.addr(), "room=trim", Some("2"))
        .await
        .unwrap();
    let (id, history) = sse.next_of_type("history").await;
    assert_eq!(history["data"]["truncated"], true, "{history}");
    let seqs: Vec<u64> = history["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7, 8]);
    assert_eq!(id.as_deref(), Some("8"));
}

/// `(status, code)` of a refused `/ws` and a refused `/sse` with one query.
async fn both_refusals(gw: &Gateway, query: &str) -> ((u16, Value), (u16, Value)) {
    let Err(ws) = open(&gw.ws_url(query), &[]).await else {
        panic!("/ws?{query} was not refused");
    };
    let sse = SseClient::open(&gw.addr(), query, None)
        .await
        .err()
        .expect("sse refused");
    (ws, sse)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_the_ones_of_ws() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let env = [FAST_GW, &[("JWT_SECRET", SECRET), ("API_KEYS", API_KEY)]].concat();
    let gw = start_gateway(&redis.url(), "g1", &env).await;
    let other = sign_token(
        SECRET,
        &json!({"sub":"bo","rooms":["lobby"],"exp": jsonwebtoken::get_current_timestamp() + 600}),
    );
    let (status, _) = http_request(
        &gw.addr(),
        "POST",
        "/rooms/vip/bans",
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        &json!({"user":"troll","seconds":600}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 201);
    let troll = user_token(SECRET, "troll", None);
    for (query, want, code) in [
        ("room=vip".to_owned(), 401, "unauthorized"),
        ("room=vip&token=garbage".to_owned(), 401, "unauthorized"),
        (format!("room=vip&token={other}"), 403, "forbidden"),
        (format!("room=vip&token={troll}"), 403, "banned"),
        ("room=bad%20room".to_owned(), 400, "invalid_room"),
    ] {
        let (ws, sse) = both_refusals(&gw, &query).await;
        assert_eq!(ws.0, want, "/ws {query}: {}", ws.1);
        assert_eq!(sse.0, want, "/sse {query}: {}", sse.1);
        assert_eq!(sse.1["error"]["code"], code, "{query}");
        assert_eq!(sse.1, ws.1, "the same body as /ws for {query}");
    }
    // A good token streams; refusals are counted under transport="sse".
    let good = user_token(SECRET, "ana", None);
    let mut sse = SseClient::open(&gw.addr(), &format!("room=vip&token={good}"), None)
        .await
        .unwrap();
    assert_eq!(sse.next_frame().await.1["type"], "history");
    wait_metric(
        &gw.addr(),
        "chat_gateway_connections_rejected_total{code=\"banned\",transport=\"sse\"}",
        1.0,
    )
    .await;
    wait_metric(
        &gw.addr(),
        "chat_gateway_connections{transport=\"sse\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_closes_an_open_stream_and_the_next_one_is_refused() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let env = [FAST_GW, &[("API_KEYS", API_KEY)]].concat();
    let gw = start_gateway(&redis.url(), "g1", &env).await;
    let mut sse = SseClient::open(&gw.addr(), "room=mod", None).await.unwrap();
    let (_, session) = sse.next_of_type("session").await;
    let user = session["data"]["user_id"].as_str().unwrap().to_owned();
    let value = session["data"]["session"].as_str().unwrap().to_owned();
    let (status, body) = http_request(
        &gw.addr(),
        "POST",
        "/rooms/mod/bans",
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        &json!({"user": user, "seconds": 600}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    assert!(sse.ends_within(DEADLINE).await, "the banned stream ends");
    let (status, body) = SseClient::open(&gw.addr(), &format!("room=mod&session={value}"), None)
        .await
        .err()
        .expect("a banned session is refused");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("banned"))
    );
    wait_metric(
        &gw.addr(),
        "chat_gateway_connections_closed_total{reason=\"banned\",transport=\"sse\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_does_not_read_is_cut_off() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let env = [
        FAST_GW,
        &[
            ("OUTBOUND_QUEUE", "64"),
            ("WRITE_TIMEOUT_MS", "2000"),
            ("MAX_MESSAGE_LEN", "40000"),
            ("SOCKET_SEND_BUFFER_BYTES", "16384"),
        ],
    ]
    .concat();
    let gw = start_gateway(&redis.url(), "g1", &env).await;
    // A raw socket with a small receive buffer that asks for the stream and
    // never reads a byte of it.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = sock
        .connect(([127, 0, 0, 1], gw.port).into())
        .await
        .unwrap();
    slow.write_all(
        format!(
            "GET /sse?room=flood HTTP/1.1\r\nHost: {}\r\n\r\n",
            gw.addr()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    wait_metric(
        &gw.addr(),
        "chat_gateway_connections{transport=\"sse\"}",
        1.0,
    )
    .await;
    // A reading SSE member and a WebSocket member keep up meanwhile.
    let mut reader = SseClient::open(&gw.addr(), "room=flood", None)
        .await
        .unwrap();
    let (mut sender, _) = Client::join(&gw.ws_url("room=flood")).await;
    let big = "x".repeat(30_000);
    let metric_addr = gw.addr();
    let mut sent = 0;
    let cut = loop {
        sender
            .acked(message_frame("flood", &big, &format!("c{sent}")))
            .await;
        sent += 1;
        reader.next_of_type("message").await;
        let closed = metric(
            &metric_addr,
            "chat_gateway_connections_closed_total{reason=\"slow_consumer\",transport=\"sse\"}",
        )
        .await;
        if closed == Some(1.0) {
            break sent;
        }
        assert!(sent < 2000, "the slow SSE reader was never cut off");
    };
    assert!(cut > 1, "cut off only once it fell behind ({cut})");
    wait_metric(
        &gw.addr(),
        "chat_gateway_connections{transport=\"sse\"}",
        1.0,
    )
    .await;
    // The reading stream is still served.
    sender.acked(message_frame("flood", "after", "after")).await;
    loop {
        let (_, f) = reader.next_of_type("message").await;
        if f["data"]["message"] == "after" {
            break;
        }
    }
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_websocket_members_see_one_order() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let g1 = start_gateway(&redis.url(), "g1", FAST_GW).await;
    let g2 = start_gateway(&redis.url(), "g2", FAST_GW).await;
    let mut sse = SseClient::open(&g1.addr(), "room=order", None)
        .await
        .unwrap();
    let (_, session) = sse.next_of_type("session").await;
    let session = session["data"]["session"].as_str().unwrap().to_owned();
    let (mut watcher, _) = Client::join(&g2.ws_url("room=order")).await;
    let (mut a, _) = Client::join(&g1.ws_url("room=order&username=a")).await;
    let (mut b, _) = Client::join(&g2.ws_url("room=order&username=b")).await;
    let n = 30;
    let http_addr = g2.addr();
    let http_path = format!("/rooms/order/messages?session={session}");
    // Three senders at once: two WebSockets on two gateways, and the SSE
    // member posting over HTTP.
    let http_sender = tokio::spawn(async move {
        for i in 0..n {
            let (status, body) = http_request(
                &http_addr,
                "POST",
                &http_path,
                &[],
                &json!({"message": format!("h{i}"), "client_id": format!("h{i}")}).to_string(),
            )
            .await
            .unwrap();
            assert_eq!(status, 201, "{body}");
        }
    });
    for i in 0..n {
        a.send_text(&message_frame("order", &format!("a{i}"), &format!("a{i}")).to_string())
            .await;
        b.send_text(&message_frame("order", &format!("b{i}"), &format!("b{i}")).to_string())
            .await;
    }
    http_sender.await.unwrap();
    let total = 3 * n;
    let mut over_ws = Vec::new();
    while over_ws.len() < total {
        let f = watcher.next_of_type("message").await;
        over_ws.push((f["data"]["seq"].as_u64().unwrap(), f["data"]["id"].clone()));
    }
    let mut over_sse = Vec::new();
    while over_sse.len() < total {
        let (id, f) = sse.next_of_type("message").await;
        assert_eq!(id, Some(seq(&f)));
        over_sse.push((f["data"]["seq"].as_u64().unwrap(), f["data"]["id"].clone()));
    }
    assert_eq!(over_sse, over_ws, "one order for both transports");
    assert!(
        over_ws.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "seq rises by 1"
    );
    let by_http = stored_records(&redis, "order")
        .await
        .iter()
        .filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with('h')))
        .count();
    assert_eq!(by_http, n);
}
