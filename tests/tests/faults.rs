//! Fault tolerance with real processes: workers and gateways SIGKILLed or
//! SIGTERMed, Redis killed and restarted, a client that never reads. Each test
//! asserts on what every client saw and what Redis holds afterwards.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::store::{Store, Topology};
use common::*;
use futures_util::{SinkExt, StreamExt};
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// What one chatting client observed.
#[derive(Debug, Default)]
struct Seen {
    acked: Vec<String>,
    unavailable: usize,
    /// `(seq, id)` of every message frame, in arrival order.
    received: Vec<(u64, String)>,
}

/// One chatting client's script.
struct Chat {
    url: String,
    room: String,
    tag: String,
    /// Messages to send.
    count: usize,
    /// Extra characters per message.
    pad: usize,
    /// Interval between sends.
    pace: Duration,
}

impl Chat {
    fn new(url: String, room: &str, tag: &str, count: usize) -> Self {
        Self {
            url,
            room: room.into(),
            tag: tag.into(),
            count,
            pad: 0,
            pace: Duration::from_millis(10),
        }
    }
}

/// Joins `room` at `url`, sends `count` messages every `pace`, and reads until
/// it has received the number of messages `target` announces (or `deadline`).
async fn chatter(
    chat: Chat,
    mut target: watch::Receiver<Option<usize>>,
    deadline: Duration,
) -> Seen {
    let Chat {
        url,
        room,
        tag,
        count,
        pad,
        pace,
    } = chat;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let mut seen = Seen::default();
    let mut sent = 0;
    let mut tick = tokio::time::interval(pace);
    let padding = "x".repeat(pad);
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(t) = *target.borrow() {
            if seen.received.len() >= t {
                break;
            }
        }
        tokio::select! {
            _ = tick.tick(), if sent < count => {
                let f = json!({"type":"message","data":{"room":room,"message":format!("{tag}-{sent}{padding}"),"client_id":format!("{tag}-{sent}")}});
                if ws.send(Message::Text(f.to_string().into())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            frame = ws.next() => {
                let Some(Ok(Message::Text(t))) = frame else {
                    if matches!(frame, Some(Ok(_))) { continue; }
                    break;
                };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str().unwrap() {
                    "ack" => seen.acked.push(v["data"]["id"].as_str().unwrap().to_owned()),
                    // As the protocol says a client must: after `unavailable`
                    // for `client_id` C, resend from C on, in order, with the
                    // same client_ids (the gateway refuses everything after C
                    // until C comes again; the dedupe window stores each once).
                    "error" if v["data"]["code"] == "unavailable" => {
                        seen.unavailable += 1;
                        let refused = v["data"]["client_id"]
                            .as_str()
                            .and_then(|c| c.strip_prefix(&format!("{tag}-")))
                            .and_then(|n| n.parse::<usize>().ok());
                        if let Some(n) = refused {
                            sent = sent.min(n);
                        }
                    }
                    "message" => seen.received.push((v["data"]["seq"].as_u64().unwrap(), v["data"]["id"].as_str().unwrap().to_owned())),
                    // The join history is part of what the client received.
                    "history" => seen.received.extend(v["data"]["messages"].as_array().unwrap().iter().map(|m| {
                        (m["seq"].as_u64().unwrap(), m["id"].as_str().unwrap().to_owned())
                    })),
                    // Presence announcements of the chatting clients, and
                    // each connection's anonymous session.
                    "join" | "leave" | "session" => {}
                    other => panic!("unexpected frame {other}: {v}"),
                }
            }
            _ = target.changed() => {}
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    seen
}

/// Stored records (of `messages:<room>`) as `(seq, id)`.
fn seq_ids(records: &[Value]) -> Vec<(u64, String)> {
    records
        .iter()
        .map(|v| {
            (
                v["seq"].as_u64().unwrap(),
                v["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The per-room checks shared by the chaos tests: history holds every acked
/// message exactly once with `seq` 1..=n, and every client received exactly
/// that sequence.
fn assert_room_consistent(
    room: &str,
    hist: &[(u64, String)],
    acked: &HashSet<String>,
    clients: &[&Seen],
) {
    let seqs: Vec<u64> = hist.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=hist.len() as u64).collect::<Vec<_>>(),
        "room {room}: seq has a gap or repeat"
    );
    let ids: HashSet<&String> = hist.iter().map(|(_, id)| id).collect();
    assert_eq!(
        ids.len(),
        hist.len(),
        "room {room}: a message is twice in history"
    );
    for id in acked {
        assert!(
            ids.contains(id),
            "room {room}: acked message {id} missing from history"
        );
    }
    for (i, c) in clients.iter().enumerate() {
        let got: Vec<u64> = c.received.iter().map(|(s, _)| *s).collect();
        let missing: Vec<u64> = seqs.iter().filter(|s| !got.contains(s)).copied().collect();
        eprintln!(
            "room {room} client {i}: received {} of {}, missing {missing:?}",
            got.len(),
            hist.len()
        );
        assert_eq!(
            c.received, hist,
            "room {room}: client {i} did not receive exactly the history, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_workers_under_load_loses_nothing_and_duplicates_nothing() {
    killing_workers_under_load(Topology::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_killing_workers_under_load_loses_nothing_and_duplicates_nothing() {
    killing_workers_under_load(Topology::Cluster).await;
}

async fn killing_workers_under_load(topology: Topology) {
    let redis = Store::start(topology).await;
    let mut w1 = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let mut w2 = start_worker(&redis.url(), "w2", FAST_WORKER).await;
    let _w3 = start_worker(&redis.url(), "w3", FAST_WORKER).await;
    let gw1 = start_gateway(&redis.url(), "gw1", FAST_GW).await;
    let gw2 = start_gateway(&redis.url(), "gw2", FAST_GW).await;

    let rooms = ["chaos-a", "chaos-b", "chaos-c"];
    let per_client = 60;
    let mut targets = HashMap::new();
    let mut tasks = Vec::new();
    for room in rooms {
        let (tx, rx) = watch::channel(None);
        targets.insert(room, tx);
        for (i, gw) in [&gw1, &gw2].into_iter().enumerate() {
            let url = gw.ws_url(&format!("room={room}"));
            tasks.push((
                room,
                tokio::spawn(chatter(
                    Chat {
                        pad: 0,
                        pace: Duration::from_millis(15),
                        ..Chat::new(url, room, &format!("{room}-{i}"), per_client)
                    },
                    rx.clone(),
                    Duration::from_secs(60),
                )),
            ));
        }
    }
    // Kill one worker once traffic flows, another a little later, then add one.
    eventually("traffic persisted", DEADLINE, || async {
        (seq_ids(&redis.stored_records("chaos-a").await).len() >= 20).then_some(())
    })
    .await;
    w1.proc.kill9();
    eventually("more traffic persisted", DEADLINE, || async {
        (seq_ids(&redis.stored_records("chaos-b").await).len() >= 60).then_some(())
    })
    .await;
    w2.proc.kill9();
    let _w4 = start_worker(&redis.url(), "w4", FAST_WORKER).await;
    // The survivor hands half of its shards to the newcomer.
    eventually("shards spread fairly over w3 and w4", DEADLINE, || async {
        let owners = redis
            .lease_owners(4)
            .await
            .ok()?
            .into_iter()
            .collect::<Option<Vec<String>>>()?;
        let w4 = owners.iter().filter(|o| *o == "w4").count();
        (w4 == 2 && owners.iter().filter(|o| *o == "w3").count() == 2).then_some(())
    })
    .await;

    // Everything sent is acked (Redis stayed up); then each room's total is known.
    let expected: HashMap<&str, usize> = rooms.iter().map(|r| (*r, 2 * per_client)).collect();
    for (room, tx) in &targets {
        tx.send(Some(expected[room])).unwrap();
    }
    let mut seen: HashMap<&str, Vec<Seen>> = HashMap::new();
    for (room, t) in tasks {
        seen.entry(room).or_default().push(t.await.unwrap());
    }
    for room in rooms {
        let clients = &seen[room];
        let acked: HashSet<String> = clients
            .iter()
            .flat_map(|c| c.acked.iter().cloned())
            .collect();
        assert_eq!(acked.len(), 2 * per_client, "room {room}: every send acked");
        let hist = seq_ids(&redis.stored_records(room).await);
        assert_eq!(hist.len(), 2 * per_client);
        assert_room_consistent(room, &hist, &acked, &clients.iter().collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_crash_clients_recover_on_the_other_and_janitor_cleans_up() {
    gateway_crash(Topology::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_gateway_crash_clients_recover_on_the_other_and_janitor_cleans_up() {
    gateway_crash(Topology::Cluster).await;
}

async fn gateway_crash(topology: Topology) {
    let redis = Store::start(topology).await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let mut gw1 = start_gateway(&redis.url(), "gw1", FAST_GW).await;
    let gw2 = start_gateway(&redis.url(), "gw2", FAST_GW).await;
    let (mut a, h) = Client::join(&gw1.ws_url("room=crash")).await;
    let (mut b, _) = Client::join(&gw2.ws_url("room=crash")).await;
    for i in 1..=5 {
        b.say("crash", &format!("m{i}"), &format!("c{i}")).await;
    }
    let before = a.messages(5).await;
    b.messages(5).await;
    let _ = h;
    let epoch = {
        let (_, h) = Client::join(&gw2.ws_url("room=crash")).await;
        h["data"]["epoch"].as_str().unwrap().to_owned()
    };
    gw1.proc.kill9();
    for i in 6..=10 {
        b.say("crash", &format!("m{i}"), &format!("c{i}")).await;
    }
    b.messages(5).await;
    let since = before.last().unwrap()["seq"].as_u64().unwrap();
    let (mut a2, h) =
        Client::join(&gw2.ws_url(&format!("room=crash&since={since}&epoch={epoch}"))).await;
    let mut all: Vec<u64> = before.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    all.extend(
        h["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap()),
    );
    b.say("crash", "m11", "c11").await;
    all.extend(
        a2.messages(1)
            .await
            .iter()
            .map(|m| m["seq"].as_u64().unwrap()),
    );
    assert_eq!(
        all,
        (1..=11).collect::<Vec<_>>(),
        "complete, ordered, no repeats across the crash"
    );

    let mut c = redis.conn().await;
    eventually(
        "janitor removed the dead gateway's connections",
        DEADLINE,
        || {
            let mut c = c.clone();
            async move {
                let m: Vec<String> = c.smembers("connections:crash").await.ok()?;
                let owners: Vec<String> = c
                    .hkeys("chat:room-gateways:{connections:crash}")
                    .await
                    .ok()?;
                (!m.iter().any(|m| m.starts_with("gw1/")) && !owners.contains(&"gw1".to_owned()))
                    .then_some(())
            }
        },
    )
    .await;
    let members: Vec<String> = c.smembers("connections:crash").await.unwrap();
    assert_eq!(
        members.len(),
        2,
        "gw2's two live connections stay: {members:?}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_others_keep_up() {
    slow_consumer(Topology::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_client_that_never_reads_is_disconnected_and_others_keep_up() {
    slow_consumer(Topology::Cluster).await;
}

async fn slow_consumer(topology: Topology) {
    let redis = Store::start(topology).await;
    let _w = start_worker(
        &redis.url(),
        "w1",
        &[("BATCH_SIZE", "32"), ("STREAM_SHARDS", "4")],
    )
    .await;
    let env = [
        FAST_GW,
        &[
            // Room for a reading client on a busy machine (a CPU hog beside
            // the suite) to fall briefly behind without being cut off; the
            // client that never reads still fills it within a second.
            ("OUTBOUND_QUEUE", "256"),
            ("WRITE_TIMEOUT_MS", "5000"),
            ("MAX_MESSAGE_LEN", "40000"),
        ],
    ]
    .concat();
    let gw = start_gateway(&redis.url(), "gw1", &env).await;
    let rss_before = rss_bytes(gw.proc.pid());
    let slow = Client::connect_small_buffer(&gw.ws_url("room=slow"), gw.port).await;
    // What the kernel holds for the client that never reads, on the
    // gateway's side of its socket: sampled until the socket is gone.
    let slow_port = slow.local_port.expect("harness-opened socket");
    let gw_port = gw.port;
    let kernel_queue = tokio::spawn(async move {
        let mut peak = 0;
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            match tcp_send_queue(gw_port, slow_port) {
                Some(q) => peak = peak.max(q),
                None => return (peak, true),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (peak, false)
    });
    let total = 1500;
    let (tx, rx) = watch::channel(Some(total));
    let reader = tokio::spawn(chatter(
        Chat {
            pad: 0,
            pace: Duration::from_millis(1),
            ..Chat::new(gw.ws_url("room=slow"), "slow", "r", 0)
        },
        rx.clone(),
        Duration::from_secs(60),
    ));
    let sender = tokio::spawn(chatter(
        Chat {
            pad: 20_000,
            pace: Duration::from_millis(4),
            ..Chat::new(gw.ws_url("room=slow"), "slow", "s", total)
        },
        rx,
        Duration::from_secs(60),
    ));
    let reader = reader.await.unwrap();
    let sender = sender.await.unwrap();
    drop(tx);
    assert_eq!(sender.acked.len(), total);
    let expected: Vec<u64> = (1..=total as u64).collect();
    assert_eq!(
        reader.received.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        expected,
        "the reading client got everything, in order"
    );
    assert_eq!(sender.received.len(), total);
    // 1500 x 20 KB went by the client that never read: buffered for it, that
    // would be 30 MB. Bounded, the gateway grows by its queues only.
    let grown = rss_bytes(gw.proc.pid()).saturating_sub(rss_before);
    eprintln!("gateway RSS grew by {} KiB", grown / 1024);
    assert!(grown < 20 << 20, "gateway RSS grew by {} MiB", grown >> 20);
    let metric_addr = gw.addr();
    let kicked = eventually("slow consumer disconnected", DEADLINE, || {
        let a = metric_addr.clone();
        async move {
            metric(&a, "chat_gateway_slow_consumer_disconnects_total")
                .await
                .filter(|v| *v >= 1.0)
        }
    })
    .await;
    assert!(kicked >= 1.0);
    let closed = eventually("slow close counted", DEADLINE, || {
        let a = metric_addr.clone();
        async move {
            metric(
                &a,
                "chat_gateway_connections_closed_total{reason=\"slow_consumer\",transport=\"ws\"}",
            )
            .await
        }
    })
    .await;
    assert_eq!(closed, 1.0);
    // The kicked peer still never reads and still holds its socket open: the
    // gateway must not keep megabytes queued for it in the kernel
    // (FIN-WAIT-1) after giving up; it resets the socket instead.
    let (peak, gone) = kernel_queue.await.unwrap();
    eprintln!("gateway-side kernel send queue for the kicked client peaked at {peak} bytes");
    assert!(
        gone,
        "the gateway's socket to the kicked client still exists, holding {:?} bytes",
        tcp_send_queue(gw_port, slow_port)
    );
    let c = redis.conn().await;
    eventually(
        "every connection deregistered, the kicked one included",
        DEADLINE,
        || {
            let mut c = c.clone();
            async move {
                c.smembers::<_, Vec<String>>("connections:slow")
                    .await
                    .ok()?
                    .is_empty()
                    .then_some(())
            }
        },
    )
    .await;
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_gateway_and_worker() {
    sigterm_drains(Topology::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_sigterm_drains_gateway_and_worker() {
    sigterm_drains(Topology::Cluster).await;
}

async fn sigterm_drains(topology: Topology) {
    let redis = Store::start(topology).await;
    let worker_env = [("LEASE_TTL_MS", "6000"), ("STREAM_SHARDS", "4")];
    let mut w1 = start_worker(&redis.url(), "w1", &worker_env).await;
    let gw = start_gateway(&redis.url(), "gw1", &[("STREAM_SHARDS", "4")]).await;
    let mut gw_proc = gw.proc;
    let gw2 = start_gateway(&redis.url(), "gw2", &[("STREAM_SHARDS", "4")]).await;
    let (mut a, _) = Client::join(&format!("ws://127.0.0.1:{}/ws?room=drain", gw.port)).await;
    let mut c = redis.conn().await;
    eventually("w1 holds all shards", DEADLINE, || async {
        redis
            .lease_owners(4)
            .await
            .unwrap()
            .iter()
            .all(|o| o.as_deref() == Some("w1"))
            .then_some(())
    })
    .await;

    // Gateway: 1001 to clients, entries removed, clean exit.
    gw_proc.sigterm();
    let closed = a.wait_closed(DEADLINE).await;
    assert_eq!(closed.map(|c| c.0), Some(1001));
    let status = gw_proc
        .wait_exit(DEADLINE)
        .await
        .expect("gateway exits after SIGTERM");
    assert!(status.success());
    let members: Vec<String> = c.smembers("connections:drain").await.unwrap();
    assert!(
        members.is_empty(),
        "drained connection deregistered: {members:?}"
    );
    let gws: Vec<String> = c.hkeys("chat:gateways").await.unwrap();
    assert!(!gws.contains(&"gw1".to_owned()));

    // Worker: leases released at once, so a new worker takes over well before
    // they could have expired.
    let _w2 = start_worker(&redis.url(), "w2", &worker_env).await;
    let released_at = Instant::now();
    w1.proc.sigterm();
    let status = w1
        .proc
        .wait_exit(DEADLINE)
        .await
        .expect("worker exits after SIGTERM");
    assert!(status.success());
    let after_exit: Vec<Option<String>> = redis.lease_owners(4).await.unwrap();
    assert!(
        after_exit.iter().all(|o| o.as_deref() != Some("w1")),
        "w1 released its leases: {after_exit:?}"
    );
    eventually("w2 takes every shard", DEADLINE, || async {
        redis
            .lease_owners(4)
            .await
            .unwrap()
            .iter()
            .all(|o| o.as_deref() == Some("w2"))
            .then_some(())
    })
    .await;
    let _ = released_at;
    // Service continues.
    let (mut b, _) = Client::join(&gw2.ws_url("room=drain")).await;
    b.say("drain", "after drain", "d1").await;
    assert_eq!(b.messages(1).await[0]["message"], "after drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_load_keeps_every_acked_message() {
    let mut redis = Redis::start_durable().await;
    let w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let gw1 = start_gateway(&redis.url(), "gw1", FAST_GW).await;
    let gw2 = start_gateway(&redis.url(), "gw2", FAST_GW).await;
    let (tx, rx) = watch::channel(None);
    let t1 = tokio::spawn(chatter(
        Chat {
            pad: 0,
            pace: Duration::from_millis(10),
            ..Chat::new(gw1.ws_url("room=outage"), "outage", "a", 150)
        },
        rx.clone(),
        Duration::from_secs(60),
    ));
    let t2 = tokio::spawn(chatter(
        Chat {
            pad: 0,
            pace: Duration::from_millis(10),
            ..Chat::new(gw2.ws_url("room=outage"), "outage", "b", 150)
        },
        rx.clone(),
        Duration::from_secs(60),
    ));
    eventually("traffic persisted", DEADLINE, || async {
        (seq_ids(&stored_records(&redis, "outage").await).len() >= 40).then_some(())
    })
    .await;
    redis.stop();
    // While Redis is down the gateways say so.
    let addr = gw1.addr();
    eventually("health 503", DEADLINE, || {
        let a = addr.clone();
        async move { (http_get(&a, "/health").await.ok()?.0 == 503).then_some(()) }
    })
    .await;
    redis.restart().await;
    // Wait for the senders to finish, then for delivery of what history holds.
    eventually(
        "history grows again after the restart",
        Duration::from_secs(30),
        || async {
            let h = seq_ids(&stored_records(&redis, "outage").await);
            (h.len() >= 100).then_some(())
        },
    )
    .await;
    // Stop adding: let the senders run out, then fix the target at the final history length.
    eventually("history stable", Duration::from_secs(30), || async {
        let a = seq_ids(&stored_records(&redis, "outage").await).len();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = seq_ids(&stored_records(&redis, "outage").await).len();
        (a == b).then_some(())
    })
    .await;
    let hist = seq_ids(&stored_records(&redis, "outage").await);
    tx.send(Some(hist.len())).unwrap();
    let a = t1.await.unwrap();
    let b = t2.await.unwrap();
    let acked: HashSet<String> = a.acked.iter().chain(b.acked.iter()).cloned().collect();
    assert!(
        a.unavailable + b.unavailable > 0,
        "sends during the outage were refused with `unavailable`"
    );
    assert_eq!(
        acked.len(),
        300,
        "every send was acked in the end (refused ones resent in order)"
    );
    let seqs: Vec<u64> = hist.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=hist.len() as u64).collect::<Vec<_>>());
    let ids: HashSet<&String> = hist.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), hist.len(), "no duplicates");
    for id in &acked {
        assert!(ids.contains(id), "acked message {id} lost");
    }
    // Clients that stayed connected end with the whole history, in order.
    for (name, c) in [("a", &a), ("b", &b)] {
        let got: Vec<u64> = c.received.iter().map(|(s, _)| *s).collect();
        let mut dedup = got.clone();
        dedup.dedup();
        assert_eq!(dedup, got, "client {name}: repeats");
        assert_eq!(
            got, seqs,
            "client {name}: received exactly the history in order"
        );
    }
    let mut w = w;
    assert!(w.proc.is_running(), "worker survived the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_starts_a_new_epoch_that_connected_clients_are_told_about() {
    let mut redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let gw = start_gateway(&redis.url(), "gw1", FAST_GW).await;
    let (mut a, h) = Client::join(&gw.ws_url("room=amnesia")).await;
    assert!(
        h["data"].get("epoch").is_none(),
        "a new room has no epoch yet"
    );
    for i in 1..=3 {
        a.say("amnesia", &format!("old-{i}"), &format!("o{i}"))
            .await;
    }
    let old = a.messages(3).await;
    assert_eq!(old[2]["seq"], 3);

    // Redis comes back empty (no persistence): history, seq and registrations are gone.
    redis.restart().await;
    let c = redis.conn().await;
    eventually("gateway re-registered its connection", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let m: Vec<String> = c.smembers("connections:amnesia").await.ok()?;
            (m.len() == 1).then_some(())
        }
    })
    .await;
    // The client keeps sending until one message is accepted.
    let mut n = 0;
    let reset = loop {
        n += 1;
        a.say("amnesia", "fresh", &format!("f{n}")).await;
        let mut found = None;
        while let Some(f) = a.next_json_within(Duration::from_millis(500)).await {
            if f["type"] == "history" {
                found = Some(f);
                break;
            }
        }
        if let Some(f) = found {
            break f;
        }
        assert!(n < 20, "no epoch reset frame after 20 attempts");
    };
    assert_eq!(reset["data"]["reset"], "epoch_changed");
    let msgs = reset["data"]["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["seq"], 1, "the new epoch starts at seq 1");
    assert_eq!(msgs[0]["message"], "fresh");
    assert!(reset["data"]["epoch"].is_string());
}
