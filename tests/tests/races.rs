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
    stored_records(redis, room)
        .await
        .iter()
        .map(|v| {
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

    // A worker drains the stream; appends are taken again. The connection
    // refuses every later message until the refused one comes again (send
    // order after a refusal), so the client resends it, as a client must.
    let _w = start_worker(&redis.url(), "w1", &[("STREAM_SHARDS", "1")]).await;
    let end = std::time::Instant::now() + DEADLINE;
    'retry: loop {
        assert!(
            std::time::Instant::now() < end,
            "appends still refused after the worker drained the stream"
        );
        client.say("backlog", "over", "over-1").await;
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
    let (_, worker) = http_get(&w.addr(), "/readyz").await.unwrap();
    let worker: Value = serde_json::from_str(&worker).unwrap();
    assert!(worker["warnings"][0]
        .as_str()
        .unwrap()
        .contains("noeviction"));
}

/// The gateway's own entry in `connections:<room>`, if registered.
async fn members(redis: &Redis, room: &str) -> Vec<String> {
    let mut c = redis.conn().await;
    c.smembers(format!("connections:{room}")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_beats_during_the_sweep_that_evicts_it_re_registers() {
    let redis = Redis::start().await;
    let _w = start_worker(
        &redis.url(),
        "w1",
        &[
            ("GATEWAY_TIMEOUT_MS", "1000"),
            ("JANITOR_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let gw = start_gateway(&redis.url(), "gw1", &[("HEARTBEAT_MS", "100")]).await;
    let _client = Client::join(&gw.ws_url("room=live")).await;
    eventually("the connection is registered", DEADLINE, || {
        let r = &redis;
        async move { (!members(r, "live").await.is_empty()).then_some(()) }
    })
    .await;
    // Many rooms with entries of this gateway make the janitor's sweep long
    // enough to resume the gateway in the middle of it.
    const ROOMS: usize = 10_000;
    let mut c = redis.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..ROOMS {
        pipe.sadd("rooms:active", format!("pad-{i}")).ignore();
        pipe.sadd(format!("connections:pad-{i}"), "gw1/pad")
            .ignore();
        pipe.hset(
            format!("chat:room-gateways:{{connections:pad-{i}}}"),
            "gw1",
            1,
        )
        .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let pad_keys: Vec<String> = (0..ROOMS)
        .map(|i| format!("chat:room-gateways:{{connections:pad-{i}}}"))
        .collect();

    // Frozen, the gateway misses its heartbeats and is judged dead; it
    // resumes (and beats at once) after the sweep has started removing its
    // entries and before it ends.
    gw.proc.signal("STOP");
    let mut c2 = c.clone();
    eventually("the janitor's sweep is under way", DEADLINE, || {
        let keys = pad_keys.clone();
        let mut c = c2.clone();
        async move {
            let left: usize = redis::cmd("EXISTS")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .ok()?;
            (left < ROOMS).then_some(())
        }
    })
    .await;
    gw.proc.signal("CONT");
    // The gateway's first heartbeat after resuming must land mid-sweep.
    eventually("the resumed gateway beats", DEADLINE, || {
        let mut c = c2.clone();
        async move {
            let (secs, _): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.ok()?;
            let beat: i64 = c.hget("chat:gateways", "gw1").await.ok()?;
            (beat >= secs * 1000 - 1000).then_some(())
        }
    })
    .await;
    let left: usize = redis::cmd("EXISTS")
        .arg(&pad_keys)
        .query_async(&mut c2)
        .await
        .unwrap();
    assert!(
        left > 0,
        "the sweep ended before the gateway beat again; pad more rooms"
    );

    // The sweep goes on removing the gateway's entries (it judged it dead),
    // the live connection's included, wherever it falls in the walk.
    eventually("the sweep finished", Duration::from_secs(60), || {
        let keys = pad_keys.clone();
        let mut c = c2.clone();
        async move {
            let left: usize = redis::cmd("EXISTS")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .ok()?;
            (left == 0).then_some(())
        }
    })
    .await;
    // The gateway is alive: it must notice and register its connection again.
    eventually("the live connection is registered again", DEADLINE, || {
        let r = &redis;
        async move {
            let mut c = r.conn().await;
            let count: Option<i64> = c
                .hget("chat:room-gateways:{connections:live}", "gw1")
                .await
                .ok()?;
            (count == Some(1) && members(r, "live").await.len() == 1).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_room_dropped_from_rooms_active_is_restored_by_heartbeats() {
    let redis = Redis::start().await;
    let gw = start_gateway(&redis.url(), "gw1", &[("HEARTBEAT_MS", "100")]).await;
    let _client = Client::join(&gw.ws_url("room=kept")).await;
    let mut c = redis.conn().await;
    eventually("the room is active", DEADLINE, || {
        let mut c = c.clone();
        async move {
            c.sismember::<_, _, bool>("rooms:active", "kept")
                .await
                .ok()?
                .then_some(())
        }
    })
    .await;
    // What the janitor does when a join lands between its emptiness check
    // and its removal: the room leaves rooms:active while it has a member.
    let _: () = c.srem("rooms:active", "kept").await.unwrap();
    eventually("the room is active again", DEADLINE, || {
        let mut c = c.clone();
        async move {
            c.sismember::<_, _, bool>("rooms:active", "kept")
                .await
                .ok()?
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_gateway_id_in_use_is_refused_without_touching_the_live_one() {
    let redis = Redis::start().await;
    let env = [("HEARTBEAT_MS", "100")];
    let gw = start_gateway(&redis.url(), "twin", &env).await;
    let _client = Client::join(&gw.ws_url("room=twins")).await;
    let before = eventually("the connection is registered", DEADLINE, || {
        let r = &redis;
        async move {
            let m = members(r, "twins").await;
            (!m.is_empty()).then_some(m)
        }
    })
    .await;
    let mut second = spawn_service(
        "chat-gateway",
        "gateway-twin-2",
        "PORT",
        &redis.url(),
        &[("GATEWAY_ID", "twin")],
        &env,
    );
    let status = second
        .1
        .wait_exit(DEADLINE)
        .await
        .expect("the second gateway with the same id exits");
    assert_eq!(status.code(), Some(64), "{}", second.1.log_text());
    assert!(second.1.log_text().contains("in use"));
    assert_eq!(
        members(&redis, "twins").await,
        before,
        "the live gateway's entries are untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_drops_batches_and_recovers_them_from_history() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[("STREAM_SHARDS", "1")]).await;
    let slow = start_gateway(
        &redis.url(),
        "slow",
        &[FAST_GW, &[("DELIVERY_BUFFER_BATCHES", "8")]].concat(),
    )
    .await;
    let other = start_gateway(&redis.url(), "other", FAST_GW).await;
    let (mut reader, _) = Client::join(&slow.ws_url("room=flood")).await;
    let (mut sender, _) = Client::join(&other.ws_url("room=flood")).await;
    // Frozen, the gateway reads nothing: every batch the worker publishes to
    // it waits in its socket and arrives in one burst when it resumes.
    slow.proc.signal("STOP");
    const N: u64 = 300;
    for i in 0..N {
        sender
            .say("flood", &format!("m{i}"), &format!("c{i}"))
            .await;
        // One batch per message: each is acked before the next is sent.
        sender.next_of_type("ack").await;
    }
    slow.proc.signal("CONT");
    let got: Vec<u64> = reader
        .messages(N as usize)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let overflows = metric(&slow.addr(), "chat_gateway_delivery_overflows_total").await;
    assert!(
        overflows.is_some_and(|n| n >= 1.0),
        "the 8-batch buffer overflowed: {overflows:?}"
    );
}
