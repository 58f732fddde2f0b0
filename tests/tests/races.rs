//! Narrow windows that random kills do not reach, each forced on purpose:
//! a retry after an append whose reply came too late, a stream backlog that
//! outgrows its workers, a Redis that may evict keys, the janitor racing a
//! heartbeat, and a room dropped from `rooms:active` while it is joined.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_tests::http_get;
use common::*;
use redis::AsyncCommands;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards loopback TCP to Redis. Commands always pass at once; while
/// `hold` is set, Redis's replies are held back (not dropped), so a command
/// runs in Redis while its caller times out waiting for the answer.
struct HoldingProxy {
    port: u16,
    hold: Arc<AtomicBool>,
}

impl HoldingProxy {
    async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(AtomicBool::new(false));
        let h = hold.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                let hold = h.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        while hold.load(Ordering::Acquire) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Self { port, hold }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

const FAST_GW: &[(&str, &str)] = &[
    ("RATE_LIMIT_PER_SEC", "100000"),
    ("RATE_LIMIT_BURST", "100000"),
    ("STREAM_SHARDS", "1"),
];

/// `(seq, message)` of every record in `messages:<room>`.
async fn stored(redis: &Redis, room: &str) -> Vec<(u64, String)> {
    let mut c = redis.conn().await;
    let raw: Vec<String> = c.lrange(format!("messages:{room}"), 0, -1).await.unwrap();
    raw.iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r).unwrap();
            (
                v["seq"].as_u64().unwrap(),
                v["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_timed_out_append_is_acked_with_the_original_id() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[("STREAM_SHARDS", "1")]).await;
    let proxy = HoldingProxy::start(redis.port).await;
    let env = [FAST_GW, &[("REDIS_TIMEOUT_MS", "300")]].concat();
    let gw = start_gateway(&proxy.url(), "gw1", &env).await;
    let (mut client, _) = Client::join(&gw.ws_url("room=dup&username=ana")).await;
    // One append first, so Redis has the append script (a NOSCRIPT round
    // trip would otherwise be what is held below).
    client.say("dup", "first", "c0").await;
    client.next_of_type("ack").await;

    // Redis runs the append, but its reply is held past the gateway's 300 ms
    // timeout: the sender hears "not stored" although the message is stored.
    proxy.hold.store(true, Ordering::Release);
    client.say("dup", "hello", "c1").await;
    let err = client.next_of_type("error").await;
    assert_eq!(err["data"]["code"], "unavailable");
    assert_eq!(err["data"]["client_id"], "c1");
    let first = eventually("the timed-out append lands", DEADLINE, || {
        let r = &redis;
        async move {
            let s = stored(r, "dup").await;
            (s.len() >= 2).then_some(s)
        }
    })
    .await;
    assert_eq!(first, [(1, "first".to_owned()), (2, "hello".to_owned())]);
    proxy.hold.store(false, Ordering::Release);
    let mut c = redis.conn().await;
    let raw: Vec<String> = c.lrange("messages:dup", 1, 1).await.unwrap();
    let original: Value = serde_json::from_str(&raw[0]).unwrap();

    // The client retries with the same client_id, as the protocol tells it to.
    client.say("dup", "hello", "c1").await;
    let ack = client.next_of_type("ack").await;
    assert_eq!(ack["data"]["client_id"], "c1");
    assert_eq!(ack["data"]["id"], original["id"], "acked as the original");
    assert_eq!(ack["data"]["timestamp"], original["timestamp"]);

    // A later message gets seq 3: the retry was not stored a second time.
    client.say("dup", "after", "c2").await;
    client.next_of_type("ack").await;
    let all = eventually("the next message is stored", DEADLINE, || {
        let r = &redis;
        async move {
            let s = stored(r, "dup").await;
            s.iter().any(|(_, m)| m == "after").then_some(s)
        }
    })
    .await;
    assert_eq!(
        all,
        [
            (1, "first".to_owned()),
            (2, "hello".to_owned()),
            (3, "after".to_owned())
        ]
    );
    // The same client_id from another user is another message.
    let (mut bob, _) = Client::join(&gw.ws_url("room=dup&username=bob")).await;
    bob.send_text(
        &serde_json::json!({"type":"message","data":{"room":"dup","message":"bob's","client_id":"c1"}})
            .to_string(),
    )
    .await;
    let ack = bob.next_of_type("ack").await;
    assert_ne!(ack["data"]["id"], original["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_refused_above_the_backlog_cap_and_resume_once_drained() {
    let redis = Redis::start().await;
    let env = [FAST_GW, &[("STREAM_BACKLOG_MAX", "1000")]].concat();
    let gw = start_gateway(&redis.url(), "gw1", &env).await;
    let mut client = Client::connect(&gw.ws_url("room=backlog")).await;
    // No worker runs: every append stays in the stream.
    for i in 0..1000 {
        client.say("backlog", "m", &format!("c{i}")).await;
    }
    let mut acked = 0;
    while acked < 1000 {
        let v = client.next_json().await;
        match v["type"].as_str() {
            Some("ack") => acked += 1,
            Some("history") => {}
            _ => panic!("unexpected frame below the cap: {v}"),
        }
    }
    client.say("backlog", "over", "over-1").await;
    let err = client.next_of_type("error").await;
    assert_eq!(err["data"]["code"], "unavailable");
    assert_eq!(err["data"]["client_id"], "over-1");
    assert!(
        err["data"]["message"].as_str().unwrap().contains("backlog"),
        "{err}"
    );
    let refused = metric(&gw.addr(), "chat_gateway_backlog_refusals_total").await;
    assert_eq!(refused, Some(1.0));

    // A worker drains the stream; appends are taken again.
    let _w = start_worker(&redis.url(), "w1", &[("STREAM_SHARDS", "1")]).await;
    let end = std::time::Instant::now() + DEADLINE;
    'retry: loop {
        assert!(
            std::time::Instant::now() < end,
            "appends still refused after the worker drained the stream"
        );
        client.say("backlog", "again", "again").await;
        loop {
            let v = client.next_json().await;
            match v["type"].as_str() {
                Some("ack") => break 'retry,
                Some("error") => break,
                _ => {}
            }
        }
        // Back off a little between attempts (the drain takes a moment).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_warns_when_redis_may_evict_chat_state() {
    let redis = Redis::start().await;
    let w = start_worker(&redis.url(), "w1", &[]).await;
    let gw = start_gateway(&redis.url(), "gw1", &[]).await;
    let (status, body) = http_get(&gw.addr(), "/readyz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready"));
    let mut c = redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut c)
        .await
        .unwrap();
    let (status, body) = http_get(&gw.addr(), "/readyz").await.unwrap();
    assert_eq!(status, 200, "still serving");
    assert!(
        body.contains("allkeys-lru") && body.contains("noeviction"),
        "{body}"
    );
    let (_, health) = http_get(&gw.addr(), "/health").await.unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    assert!(health["warnings"][0]
        .as_str()
        .unwrap()
        .contains("noeviction"));
    let (_, worker) = http_get(&format!("127.0.0.1:{}", w.metrics_port), "/readyz")
        .await
        .unwrap();
    let worker: Value = serde_json::from_str(&worker).unwrap();
    assert!(worker["warnings"][0]
        .as_str()
        .unwrap()
        .contains("noeviction"));
}
