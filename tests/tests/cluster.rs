//! The service on a real Redis Cluster (3 masters on loopback): order, no
//! loss, no duplicates and `since` recovery across two gateways; stream
//! shards spread evenly over the masters; sharded pub/sub delivery that
//! follows a gateway channel's slot to another master.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chat_shared::cluster::{slot_of, spread_tag};
use chat_shared::ids::RoomId;
use common::cluster::RedisCluster;
use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const SHARDS: &str = "16";

/// The gateways' settings: [`FAST_GW`] with 16 stream shards.
fn env() -> Vec<(&'static str, &'static str)> {
    [FAST_GW, &[("STREAM_SHARDS", SHARDS)]].concat()
}

/// Sends `text` and waits for its ack; other frames are returned in order.
async fn say_acked(c: &mut Client, room: &str, text: &str, client_id: &str) -> Vec<Value> {
    let frame = message_frame(room, text, client_id);
    c.send_text(&frame.to_string()).await;
    let mut other = Vec::new();
    loop {
        let v = c.next_json().await;
        if v["type"] == "ack" && v["data"]["client_id"] == client_id {
            return other;
        }
        assert_ne!(v["type"], "error", "{client_id} refused: {v}");
        other.push(v);
    }
}

/// The `(seq, message)` of message frames among `frames`.
fn texts(frames: &[Value]) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|v| {
            (
                v["data"]["seq"].as_u64().unwrap(),
                v["data"]["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Reads message frames until `n` have arrived (after `already`).
async fn collect(c: &mut Client, mut already: Vec<(u64, String)>, n: usize) -> Vec<(u64, String)> {
    while already.len() < n {
        let v = c.next_json().await;
        already.extend(texts(&[v]));
    }
    already
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_rooms_keep_order_lose_nothing_and_recover_with_since() {
    let cluster = RedisCluster::start(3, 0).await;
    let url = cluster.url();
    let _w = start_worker(&url, "w1", &[("STREAM_SHARDS", SHARDS)]).await;
    let gw1 = start_gateway(&url, "gw1", &env()).await;
    let gw2 = start_gateway(&url, "gw2", &env()).await;

    let rooms = ["alpha", "bravo", "charlie", "delta"];
    let per_sender = 15;
    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    for room in rooms {
        let (mut a, _) = Client::join(&gw1.ws_url(&format!("room={room}&username=a"))).await;
        let (mut b, _) = Client::join(&gw2.ws_url(&format!("room={room}&username=b"))).await;
        let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
        for i in 0..per_sender {
            for (who, c) in [("a", &mut a), ("b", &mut b)] {
                let text = format!("{room}-{who}-{i}");
                let other = say_acked(c, room, &text, &format!("{who}{i}")).await;
                let got = texts(&other);
                if who == "a" {
                    seen_a.extend(got);
                } else {
                    seen_b.extend(got);
                }
                expected.entry(room).or_default().push(text);
            }
        }
        let total = 2 * per_sender;
        let seen_a = collect(&mut a, seen_a, total).await;
        let seen_b = collect(&mut b, seen_b, total).await;
        let want: Vec<(u64, String)> = expected[room]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, t.clone()))
            .collect();
        assert_eq!(
            seen_a, want,
            "room {room}: gateway 1 in send order, seq 1.."
        );
        assert_eq!(seen_b, want, "room {room}: gateway 2 the same");
        let stored = cluster.stored_records(room).await;
        assert_eq!(stored.len(), total, "room {room}: stored once each");

        // Recovery: a client that saw up to seq 10 gets exactly the rest.
        let epoch = stored_epoch(&cluster, room).await;
        let mut late =
            Client::connect(&gw2.ws_url(&format!("room={room}&since=10&epoch={epoch}"))).await;
        let h = late.next_of_type("history").await;
        let seqs: Vec<u64> = h["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (11..=total as u64).collect::<Vec<_>>());
        assert!(h["data"].get("reset").is_none());
    }

    // Deliveries travel on sharded channels: each gateway's channel is a
    // shard channel on the master that owns its slot.
    for gw in ["gw1", "gw2"] {
        let channel = format!("chat:deliver:{gw}");
        let owner = cluster.master_of(slot_of(channel.as_bytes()));
        let listed = cluster
            .nodes
            .iter()
            .find(|n| n.port == owner)
            .unwrap()
            .cli(&["pubsub", "shardchannels"]);
        assert!(listed.contains(&channel), "{channel} on {owner}: {listed}");
    }
}

async fn stored_epoch(cluster: &RedisCluster, room: &str) -> String {
    let mut c = cluster.conn().await;
    redis::cmd("HGET")
        .arg(format!("chat:room:{{messages:{room}}}"))
        .arg("epoch")
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_shards_spread_evenly_over_the_masters() {
    let cluster = RedisCluster::start(3, 0).await;
    let url = cluster.url();
    let _w = start_worker(&url, "w1", &[("STREAM_SHARDS", SHARDS)]).await;
    let many_rooms = [&env()[..], &[("ROOM_CREATION_PER_MIN", "0")]].concat();
    let gw = start_gateway(&url, "gw1", &many_rooms).await;
    // Traffic in enough rooms to touch every shard.
    for i in 0..64 {
        let room = format!("r{i}");
        let (mut c, _) = Client::join(&gw.ws_url(&format!("room={room}&username=a"))).await;
        say_acked(&mut c, &room, "x", "c").await;
        c.close().await;
    }
    let mut per_master: HashMap<u16, usize> = HashMap::new();
    let mut conn = cluster.conn().await;
    for n in 0..16 {
        let key = format!("chat:stream:{{{}}}", spread_tag(n, 16));
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(exists, "{key} is the stream the services use");
        *per_master
            .entry(cluster.master_of(slot_of(key.as_bytes())))
            .or_default() += 1;
    }
    let mut counts: Vec<usize> = per_master.into_values().collect();
    counts.sort();
    assert_eq!(counts, [5, 5, 6], "16 shards over 3 masters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_follows_a_gateway_channel_to_another_master() {
    let cluster = RedisCluster::start(3, 0).await;
    let url = cluster.url();
    let _w = start_worker(&url, "w1", &[("STREAM_SHARDS", SHARDS)]).await;
    let gw1 = start_gateway(&url, "gw1", &env()).await;
    let gw2 = start_gateway(&url, "gw2", &env()).await;
    let room = "moving";
    let (mut sender, _) = Client::join(&gw1.ws_url(&format!("room={room}&username=s"))).await;
    let (mut reader, _) = Client::join(&gw2.ws_url(&format!("room={room}&username=r"))).await;
    say_acked(&mut sender, room, "before", "m1").await;
    assert_eq!(reader.messages(1).await[0]["message"], "before");

    // Move the slot of gw2's channel to another master.
    let slot = slot_of(b"chat:deliver:gw2");
    let from = cluster.master_of(slot);
    let to = cluster
        .nodes
        .iter()
        .map(|n| n.port)
        .find(|p| *p != from)
        .unwrap();
    cluster.move_slot(slot, to).await;

    // Everything sent afterwards still reaches gw2's client, once, in order
    // (a delivery missed while the subscription moved is caught up from
    // history by the seq cursor).
    for i in 0..5 {
        say_acked(&mut sender, room, &format!("after-{i}"), &format!("a{i}")).await;
    }
    let got: Vec<(u64, String)> = reader
        .messages(5)
        .await
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = (0..5).map(|i| (i + 2, format!("after-{i}"))).collect();
    assert_eq!(got, want);
}

/// Sends `count` messages to `room`, each until it is acked: on `unavailable`
/// or a dropped connection it resends with the same `client_id` (after
/// reconnecting), as the README tells clients to. Returns the acked ids.
async fn send_until_acked(url: String, room: String, tag: String, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut client: Option<Client> = None;
    let mut acked = Vec::new();
    for i in 0..count {
        let cid = format!("{tag}-{i}");
        let frame = message_frame(&room, &cid, &cid);
        'retry: loop {
            assert!(Instant::now() < deadline, "{cid} never acked");
            let Some(c) = client.as_mut() else {
                client = Client::try_join(&url).await;
                if client.is_none() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            };
            if c.send_raw(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                client = None;
                continue;
            }
            loop {
                match c.next_json_within(Duration::from_secs(5)).await {
                    None => {
                        client = None;
                        continue 'retry;
                    }
                    Some(v) if v["data"]["client_id"] == cid.as_str() => {
                        if v["type"] == "ack" {
                            acked.push(v["data"]["id"].as_str().unwrap().to_owned());
                            break 'retry;
                        }
                        assert_eq!(v["data"]["code"], "unavailable", "{v}");
                        // Client back-off before the resend.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'retry;
                    }
                    Some(_) => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_under_load_keeps_every_acked_message_exactly_once() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let url = cluster.url();
    let (worker_env, gw_env) = common::cluster::replica_ack_env();
    let _w = start_worker(&url, "w1", &worker_env).await;
    let gw1 = start_gateway(&url, "gw1", &gw_env).await;
    let gw2 = start_gateway(&url, "gw2", &gw_env).await;

    let rooms = ["fo-a", "fo-b", "fo-c"];
    let per_room = 60;
    let mut senders = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        let url = gw.ws_url(&format!("room={room}&username=s{i}"));
        senders.push(tokio::spawn(send_until_acked(
            url,
            room.to_string(),
            format!("s{i}"),
            per_room,
        )));
    }
    // Once traffic flows, kill the master holding the first room's stream.
    eventually("traffic persisted", DEADLINE, || async {
        (cluster.stored_records(rooms[0]).await.len() >= 10).then_some(())
    })
    .await;
    let shard = chat_shared::keys::shard_of(&RoomId::parse(rooms[0]).unwrap(), 16);
    let stream = format!("chat:stream:{{{}}}", spread_tag(shard, 16));
    let victim = cluster.master_of(slot_of(stream.as_bytes()));
    cluster.node(victim).kill();
    // The replica takes over; until the old master is back as its replica,
    // the new master has no replica to confirm writes, so with
    // ACK_AFTER_REPLICAS=1 its rooms get `unavailable` (never a false ack).
    eventually("a replica took over", Duration::from_secs(30), || async {
        cluster
            .try_master_of(slot_of(stream.as_bytes()))
            .filter(|m| *m != victim)
    })
    .await;
    cluster.node(victim).restart();
    cluster.wait_ok(Duration::from_secs(30)).await;
    assert_ne!(
        cluster.master_of(slot_of(stream.as_bytes())),
        victim,
        "a replica took over"
    );

    for (room, sender) in rooms.iter().zip(senders) {
        let acked = sender.await.unwrap();
        assert_eq!(acked.len(), per_room);
        let stored = eventually(
            "every acked message persisted",
            Duration::from_secs(30),
            || {
                let cluster = &cluster;
                let acked = &acked;
                async move {
                    let s = cluster.stored_records(room).await;
                    let ids: HashSet<&str> = s.iter().filter_map(|r| r["id"].as_str()).collect();
                    acked.iter().all(|a| ids.contains(a.as_str())).then_some(s)
                }
            },
        )
        .await;
        let ids: Vec<&str> = stored.iter().map(|r| r["id"].as_str().unwrap()).collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "room {room}: no message stored twice"
        );
        let seqs: Vec<u64> = stored.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "room {room}: seq 1..n"
        );
    }
}
