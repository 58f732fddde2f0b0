//! The delivery path under subscription faults, and connection limits.
//!
//! A subscription that drops must be restored, and one that stays open but
//! delivers nothing must be detected (readiness turns 503) and replaced; either
//! way connected clients end with every message. A tiny TCP proxy between the
//! gateway and Redis produces the silent failure: it keeps the subscriber
//! connection open but swallows what Redis sends on it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use redis::AsyncCommands;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards loopback TCP to Redis; while `mute` is set, bytes Redis sends to
/// connections that issued SUBSCRIBE are dropped (the connection stays open).
struct MutingProxy {
    port: u16,
    mute: Arc<AtomicBool>,
}

impl MutingProxy {
    async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mute = Arc::new(AtomicBool::new(false));
        let m = mute.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                let mute = m.clone();
                tokio::spawn(async move {
                    let subscriber = Arc::new(AtomicBool::new(false));
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let sub = subscriber.clone();
                    let up = tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            if buf[..n]
                                .windows(9)
                                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                            {
                                sub.store(true, Ordering::Release);
                            }
                        }
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if mute.load(Ordering::Acquire) && subscriber.load(Ordering::Acquire) {
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Self { port, mute }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

async fn ready(addr: &str) -> Option<bool> {
    Some(http_get(addr, "/readyz").await.ok()?.0 == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_subscription_is_detected_and_nothing_is_lost() {
    let redis = Redis::start().await;
    let proxy = MutingProxy::start(redis.port).await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw1 = start_gateway(&proxy.url(), "gw1", &[("PROBE_INTERVAL_MS", "100")]).await;
    let gw2 = start_gateway(&redis.url(), "gw2", &[]).await;
    let (mut a, _) = Client::join(&gw1.ws_url("room=silent")).await;
    let (mut b, _) = Client::join(&gw2.ws_url("room=silent")).await;
    b.say("silent", "before", "c0").await;
    assert_eq!(a.messages(1).await[0]["message"], "before");

    // The subscription goes quiet without closing.
    proxy.mute.store(true, Ordering::Release);
    for i in 1..=3 {
        b.say("silent", &format!("during-{i}"), &format!("c{i}"))
            .await;
    }
    b.messages(4).await;
    let addr = gw1.addr();
    eventually(
        "gateway notices the silent subscription (not ready)",
        DEADLINE,
        || {
            let a = addr.clone();
            async move { (!ready(&a).await?).then_some(()) }
        },
    )
    .await;
    let (_, body) = http_get(&addr, "/health").await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["delivery"],
        "down"
    );

    proxy.mute.store(false, Ordering::Release);
    eventually("gateway ready again", DEADLINE, || {
        let a = addr.clone();
        async move { ready(&a).await?.then_some(()) }
    })
    .await;
    // Messages published while the subscription was dead arrive by catch-up,
    // without any new message to reveal the gap.
    let got = a.messages(3).await;
    let texts: Vec<&str> = got.iter().map(|m| m["message"].as_str().unwrap()).collect();
    assert_eq!(texts, ["during-1", "during-2", "during-3"]);
    assert_eq!(
        got.iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
    b.say("silent", "after", "c9").await;
    assert_eq!(a.messages(1).await[0]["seq"], 5);
    let subs = metric(&addr, "chat_gateway_subscriptions_total")
        .await
        .unwrap();
    assert!(subs >= 2.0, "subscription was re-established ({subs})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_is_restored() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw1 = start_gateway(&redis.url(), "gw1", &[]).await;
    let (mut a, _) = Client::join(&gw1.ws_url("room=killsub")).await;
    let mut r = redis.conn().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(killed >= 1);
    let addr = gw1.addr();
    eventually("re-subscribed", DEADLINE, || {
        let a = addr.clone();
        async move {
            metric(&a, "chat_gateway_subscriptions_total")
                .await
                .filter(|v| *v >= 2.0)
        }
    })
    .await;
    a.say("killsub", "after kill", "k1").await;
    assert_eq!(a.messages(1).await[0]["message"], "after kill");
    let _: () = r.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_before_the_upgrade() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw = start_gateway(&redis.url(), "gw1", &[("MAX_CONNECTIONS", "2")]).await;
    let (c1, _) = Client::join(&gw.ws_url("room=cap")).await;
    let (_c2, _) = Client::join(&gw.ws_url("room=cap")).await;
    let err = tokio_tungstenite::connect_async(gw.ws_url("room=cap"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 503);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        other => panic!("expected HTTP 503, got {other}"),
    }
    // A slot frees when a connection closes.
    c1.close().await;
    let addr = gw.addr();
    eventually("slot freed", DEADLINE, || {
        let a = addr.clone();
        async move {
            let (_, body) = http_get(&a, "/health").await.ok()?;
            (serde_json::from_str::<Value>(&body).ok()?["connections"] == 1).then_some(())
        }
    })
    .await;
    let (_c3, _) = Client::join(&gw.ws_url("room=cap")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_another_shard_count_refuses_to_start() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[("STREAM_SHARDS", "8")]).await;
    let out = std::process::Command::new(bin_path("chat-gateway"))
        .env("REDIS_URL", redis.url())
        .env("STREAM_SHARDS", "16")
        .env("PORT", free_port().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("STREAM_SHARDS=16") && stderr.contains("uses 8"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_clears_what_its_killed_predecessor_left() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    // A fixed id waits for its predecessor's heartbeat to go stale (three
    // heartbeats): short ones keep that wait well inside the test's deadline.
    let fast = [("HEARTBEAT_MS", "200")];
    let mut gw = start_gateway(&redis.url(), "fixed-id", &fast).await;
    let (_a, _) = Client::join(&gw.ws_url("room=ghost")).await;
    let c = redis.conn().await;
    let members = |c: redis::aio::MultiplexedConnection| async move {
        let mut c = c;
        c.smembers::<_, Vec<String>>("connections:ghost")
            .await
            .unwrap()
    };
    assert_eq!(members(c.clone()).await.len(), 1);
    gw.proc.kill9();
    // Long before the janitor would judge it dead, the same id comes back.
    let gw2 = start_gateway(&redis.url(), "fixed-id", &fast).await;
    assert!(
        members(c.clone()).await.is_empty(),
        "stale entry of the killed process removed"
    );
    let mut c2 = c.clone();
    let owners: Vec<String> = c2
        .hkeys("chat:room-gateways:{connections:ghost}")
        .await
        .unwrap();
    assert!(owners.is_empty());
    // And the new process registers its own connections normally.
    let (_b, _) = Client::join(&gw2.ws_url("room=ghost")).await;
    assert_eq!(members(c.clone()).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_and_deregistered() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw = start_gateway(
        &redis.url(),
        "gw1",
        &[("PING_INTERVAL_MS", "100"), ("IDLE_TIMEOUT_MS", "400")],
    )
    .await;
    // A live client answers pings (tungstenite replies while reading) and stays.
    let (mut live, _) = Client::join(&gw.ws_url("room=idle")).await;
    // A silent one is not read at all, so it never answers.
    let (mut silent, _) = Client::join(&gw.ws_url("room=idle")).await;
    let mut c = redis.conn().await;
    // Wait for the silent one to go, reading the live one meanwhile (reading is
    // what makes it answer pings).
    let end = std::time::Instant::now() + DEADLINE;
    while c.scard::<_, u64>("connections:idle").await.unwrap() != 1 {
        assert!(
            std::time::Instant::now() < end,
            "the silent client was not closed"
        );
        let _ = live
            .next_json_within(std::time::Duration::from_millis(50))
            .await;
    }
    // The close frame (1008) is sent, but this client's late pong replies can
    // meet the already closed socket and reset it before the frame is read, so
    // the code is checked on the server side (metric below).
    let _ = silent.wait_closed(DEADLINE).await;
    // Meanwhile the reading client kept going for several idle periods.
    for i in 0..5 {
        live.say("idle", "still here", &format!("l{i}")).await;
        assert_eq!(
            live.next_of_type("ack").await["data"]["client_id"],
            format!("l{i}")
        );
        let _ = live
            .next_json_within(std::time::Duration::from_millis(150))
            .await;
    }
    let addr = gw.addr();
    let n = metric(
        &addr,
        "chat_gateway_connections_closed_total{reason=\"idle_timeout\",transport=\"ws\"}",
    )
    .await;
    assert_eq!(n, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_without_connections_or_history_leave_rooms_active() {
    let redis = Redis::start().await;
    let _w = start_worker(
        &redis.url(),
        "w1",
        &[("JANITOR_INTERVAL_MS", "100"), ("HISTORY_TTL", "2")],
    )
    .await;
    let gw = start_gateway(&redis.url(), "gw1", &[]).await;
    let c = redis.conn().await;
    let active = |c: redis::aio::MultiplexedConnection, room: &'static str| async move {
        let mut c = c;
        c.sismember::<_, _, bool>("rooms:active", room)
            .await
            .unwrap()
    };
    // A room that only had a connection: gone once it closes.
    let (a, _) = Client::join(&gw.ws_url("room=empty")).await;
    assert!(active(c.clone(), "empty").await);
    a.close().await;
    eventually("empty room leaves rooms:active", DEADLINE, || {
        let c = c.clone();
        async move { (!active(c, "empty").await).then_some(()) }
    })
    .await;
    // A room with history stays until its history expires (HISTORY_TTL=2 s).
    let (mut b, _) = Client::join(&gw.ws_url("room=kept")).await;
    b.say("kept", "remember me", "k").await;
    b.messages(1).await;
    let mut c2 = c.clone();
    let ttl: i64 = c2.ttl("messages:kept").await.unwrap();
    assert!(
        (1..=2).contains(&ttl),
        "history expires after HISTORY_TTL: {ttl}"
    );
    let state_ttl: i64 = c2.ttl("chat:room:{messages:kept}").await.unwrap();
    assert!(
        (1..=2).contains(&state_ttl),
        "sequence state expires with it: {state_ttl}"
    );
    b.close().await;
    eventually(
        "room leaves rooms:active after its history expired",
        DEADLINE,
        || {
            let c = c.clone();
            async move { (!active(c, "kept").await).then_some(()) }
        },
    )
    .await;
    let mut c3 = c.clone();
    assert!(!c3.exists::<_, bool>("messages:kept").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_forgets_dead_gateways_even_with_no_active_rooms() {
    let redis = Redis::start().await;
    let mut c = redis.conn().await;
    // A gateway that stopped heartbeating an hour ago, and no room at all.
    let (secs, _): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let _: () = c
        .hset("chat:gateways", "ghost", (secs - 3600) * 1000)
        .await
        .unwrap();
    let _w = start_worker(
        &redis.url(),
        "w1",
        &[
            ("JANITOR_INTERVAL_MS", "100"),
            ("GATEWAY_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    eventually("dead gateway forgotten", DEADLINE, || {
        let mut c = c.clone();
        async move {
            (!c.hexists::<_, _, bool>("chat:gateways", "ghost")
                .await
                .ok()?)
            .then_some(())
        }
    })
    .await;
}
