//! Send order after a refusal (issue 23 path 3; DESIGN.md "Send order after
//! a refusal"), forced with the fault proxy between the gateway and Redis.
//!
//! A client pipelines its messages; one append batch fails (an injected
//! error reply, or a reset after the script ran). The frames it had sent
//! behind the refused ones — still in the socket, in the reader's checks or
//! queued — used to be stored ahead of the client's resends. Now every
//! message after a refused one is refused until the refused `client_id`
//! comes back, and a client that resends from there in order (as the JS
//! client does) gets each message stored once, in its sending order.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use chat_tests::fault_proxy::{FaultProxy, Reply, Trigger};
use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Messages each sender pipelines.
const MESSAGES: usize = 150;

/// The client's pause before resending (the JS client's backoff).
const BACKOFF: Duration = Duration::from_millis(50);

/// A gateway that lets a fast sender through.
const GW_ENV: &[(&str, &str)] = &[
    ("RATE_LIMIT_PER_SEC", "100000"),
    ("RATE_LIMIT_BURST", "100000"),
    ("STREAM_SHARDS", "4"),
];

/// A message frame, with or without a `client_id`.
fn frame(room: &str, text: &str, client_id: Option<&str>) -> String {
    let mut data = json!({"room": room, "message": text});
    if let Some(cid) = client_id {
        data["client_id"] = cid.into();
    }
    json!({"type": "message", "data": data}).to_string()
}

/// The `i`th message of `who`.
fn text_of(who: &str, i: usize) -> String {
    format!("{who}-{i:03}")
}

/// A request not acked yet and the copies of it awaiting an answer.
struct Pending {
    i: usize,
    inflight: usize,
}

/// Pipelines `MESSAGES` messages with `client_id`s `<who>-<i>`, then
/// resends like the JS client: on an `unavailable` refusal (not a stale one,
/// for an older copy), everything pending from the refused message on, in
/// order, after one backoff. Returns the acked id of each message and how
/// many resend rounds it took.
async fn pipeline_and_resend(c: &mut Client, room: &str, who: &str) -> (Vec<String>, usize) {
    for i in 0..MESSAGES {
        let t = text_of(who, i);
        c.send_text(&frame(room, &t, Some(&t))).await;
    }
    let mut pending: Vec<Pending> = (0..MESSAGES).map(|i| Pending { i, inflight: 1 }).collect();
    let mut acked: Vec<Option<String>> = vec![None; MESSAGES];
    let mut resend: Option<(Instant, usize)> = None;
    let mut rounds = 0;
    let end = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            Instant::now() < end,
            "{who}: not all acked: {rounds} rounds"
        );
        if let Some((at, from)) = resend {
            if Instant::now() >= at {
                resend = None;
                for p in pending.iter_mut().filter(|p| p.i >= from) {
                    let t = text_of(who, p.i);
                    c.send_text(&frame(room, &t, Some(&t))).await;
                    p.inflight += 1;
                }
                continue;
            }
        }
        let wait = resend.map_or(DEADLINE, |(at, _)| {
            at.saturating_duration_since(Instant::now())
        });
        let Some(v) = c.next_json_within(wait).await else {
            assert!(c.closed.is_none(), "{who}: closed: {:?}", c.closed);
            assert!(resend.is_some(), "{who}: no answer within {DEADLINE:?}");
            continue;
        };
        let kind = v["type"].as_str().unwrap_or_default();
        if kind != "ack" && kind != "error" {
            continue;
        }
        let cid = v["data"]["client_id"].as_str().unwrap_or_default();
        let Some(i) = cid
            .strip_prefix(&format!("{who}-"))
            .and_then(|n| n.parse().ok())
        else {
            panic!("{who}: answer without one of its client_ids: {v}");
        };
        let Some(at) = pending.iter().position(|p| p.i == i) else {
            continue; // a late answer to a copy of an acked message
        };
        if kind == "ack" {
            let id = v["data"]["id"].as_str().unwrap().to_owned();
            if let Some(prev) = &acked[i] {
                assert_eq!(prev, &id, "{cid} acked with two ids");
            }
            acked[i] = Some(id);
            pending.remove(at);
            continue;
        }
        assert_eq!(v["data"]["code"], "unavailable", "{v}");
        pending[at].inflight -= 1;
        if pending[at].inflight > 0 || resend.is_some_and(|(_, from)| from <= i) {
            continue; // stale, or already part of the scheduled resend
        }
        rounds += 1;
        resend = Some((Instant::now() + BACKOFF, i));
    }
    let acked = acked.into_iter().map(Option::unwrap).collect();
    (acked, rounds)
}

/// Two senders pipeline into one room while `arm` makes one of ana's
/// append batches fail; then what history holds per sender is in send
/// order, once each, with the acked ids.
async fn one_failed_batch_keeps_send_order(room: &str, arm: impl Fn(&FaultProxy) -> Trigger) {
    let redis = Redis::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let worker_env = [FAST_WORKER, &[("HISTORY_LIMIT", "10000")]].concat();
    let _w = start_worker(&redis.url(), "w1", &worker_env).await;
    let gw = start_gateway(&format!("redis://{}", proxy.addr()), "gw1", GW_ENV).await;
    let (mut ana, _) = Client::join(&gw.ws_url(&format!("room={room}&username=ana"))).await;
    let (mut bob, _) = Client::join(&gw.ws_url(&format!("room={room}&username=bob"))).await;
    // Scripts loaded and connections open before the fault.
    ana.send_text(&frame(room, "warm-up", Some("warm-up")))
        .await;
    assert_eq!(
        ana.next_of_type("ack").await["data"]["client_id"],
        "warm-up"
    );

    let mut fired = arm(&proxy);
    let (a, b) = tokio::join!(
        pipeline_and_resend(&mut ana, room, "ana"),
        pipeline_and_resend(&mut bob, room, "bob"),
    );
    fired.wait(DEADLINE).await;
    eprintln!("resend rounds: ana {}, bob {}", a.1, b.1);
    assert!(a.1 >= 1, "the fault refused some of ana's messages");

    // Everything is acked; a sentinel sent last shows when all is persisted.
    ana.send_text(&frame(room, "sentinel", Some("sentinel")))
        .await;
    let sentinel = ana.next_of_type("ack").await;
    assert_eq!(sentinel["data"]["client_id"], "sentinel", "{sentinel}");
    let sentinel = sentinel["data"]["id"].as_str().unwrap().to_owned();
    let records = eventually("the sentinel persisted", DEADLINE, || {
        let (redis, sentinel) = (&redis, sentinel.clone());
        async move {
            let recs = stored_records(redis, room).await;
            recs.iter()
                .any(|r| r["id"] == sentinel.as_str())
                .then_some(recs)
        }
    })
    .await;
    for (who, acked) in [("ana", &a.0), ("bob", &b.0)] {
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&format!("{who}-"))
            })
            .collect();
        let order: Vec<String> = mine
            .iter()
            .map(|r| r["message"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> = (0..MESSAGES).map(|i| text_of(who, i)).collect();
        assert_eq!(order, want, "{who}'s history: in send order, each once");
        let ids: HashMap<&str, &str> = mine
            .iter()
            .map(|r| (r["message"].as_str().unwrap(), r["id"].as_str().unwrap()))
            .collect();
        for (i, id) in acked.iter().enumerate() {
            assert_eq!(
                ids[text_of(who, i).as_str()],
                id,
                "{who}-{i}: the acked id is stored"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_to_one_batch_keeps_send_order_after_resends() {
    one_failed_batch_keeps_send_order("order-error", |proxy| {
        proxy.fail_next(b"ana-040", "ERR injected by the test")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_one_batch_ran_keeps_send_order_after_resends() {
    one_failed_batch_keeps_send_order("order-reset", |proxy| {
        proxy.reset_after_next(b"ana-040", Reply::Drop)
    })
    .await;
}

/// The next answer: its `client_id` (`None`: none) and `ack` or the
/// error code.
async fn answer(c: &mut Client) -> (Option<String>, String) {
    loop {
        let v = c.next_json().await;
        if v["type"] == "ack" || v["type"] == "error" {
            let code = v["data"]["code"].as_str().unwrap_or("ack").to_owned();
            return (v["data"]["client_id"].as_str().map(str::to_owned), code);
        }
    }
}

/// The rule itself, frame by frame: after `a` is refused, `b` (no
/// `client_id`) and `c` are refused, and so is anything sent after the
/// refusals arrived, until `a` is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_refuses_every_later_message_until_its_client_id_returns() {
    let redis = Redis::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let gw = start_gateway(&format!("redis://{}", proxy.addr()), "gw1", GW_ENV).await;
    let room = "order-rule";
    let (mut c, _) = Client::join(&gw.ws_url(&format!("room={room}&username=ana"))).await;
    c.send_text(&frame(room, "warm-up", Some("w"))).await;
    assert_eq!(c.next_of_type("ack").await["data"]["client_id"], "w");

    let mut fired = proxy.fail_next(b"text-a", "ERR injected by the test");
    c.send_text(&frame(room, "text-a", Some("a"))).await;
    c.send_text(&frame(room, "text-b", None)).await;
    c.send_text(&frame(room, "text-c", Some("c"))).await;
    let u = "unavailable".to_owned();
    assert_eq!(answer(&mut c).await, (Some("a".into()), u.clone()));
    fired.wait(DEADLINE).await;
    assert_eq!(answer(&mut c).await, (None, u.clone()));
    assert_eq!(answer(&mut c).await, (Some("c".into()), u.clone()));
    // Redis works again, but `a` has not come back: still refused.
    c.send_text(&frame(room, "text-c", Some("c"))).await;
    assert_eq!(answer(&mut c).await, (Some("c".into()), u.clone()));
    c.send_text(&frame(room, "text-d", None)).await;
    assert_eq!(answer(&mut c).await, (None, u.clone()));
    // `a` again closes the window.
    for (cid, text) in [
        (Some("a"), "text-a"),
        (Some("c"), "text-c"),
        (None, "text-e"),
    ] {
        c.send_text(&frame(room, text, cid)).await;
        assert_eq!(
            answer(&mut c).await,
            (cid.map(str::to_owned), "ack".to_owned())
        );
    }
    let texts = eventually("all persisted", DEADLINE, || async {
        let recs = stored_records(&redis, room).await;
        (recs.len() >= 4).then(|| {
            recs.iter()
                .map(|r| r["message"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
    })
    .await;
    assert_eq!(texts, ["warm-up", "text-a", "text-c", "text-e"]);
}
