//! The service on a real Redis Cluster (3 masters on loopback): order, no
//! loss, no duplicates and `since` recovery across two gateways; stream
//! shards spread evenly over the masters; sharded pub/sub delivery that
//! follows a gateway channel's slot to another master.

mod common;

use std::collections::HashMap;

use chat_shared::cluster::{slot_of, spread_tag};
use common::cluster::RedisCluster;
use common::*;
use serde_json::{json, Value};

const SHARDS: &str = "16";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("RATE_LIMIT_PER_SEC", "10000"),
        ("RATE_LIMIT_BURST", "10000"),
        ("HEARTBEAT_MS", "200"),
        ("STREAM_SHARDS", SHARDS),
    ]
}

/// Sends `text` and waits for its ack; other frames are returned in order.
async fn say_acked(c: &mut Client, room: &str, text: &str, client_id: &str) -> Vec<Value> {
    let frame = json!({"type":"message","data":{"room":room,"message":text,"client_id":client_id}});
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
    let mut many_rooms = env();
    many_rooms.push(("ROOM_CREATION_PER_MIN", "0"));
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
