//! The outside report's shape of a Redis Cluster failover with
//! `ACK_AFTER_REPLICAS=1` (issue 23): 3 masters + 3 replicas, one worker,
//! two gateways, 8 rooms with one sender each that pipelines at 20 msg/s
//! (it sends on a timer and reads in the same loop, never waiting for an
//! ack before the next send) and, after a refusal of `client_id` C,
//! resends from C on, in order, on the same connection (DESIGN.md's send
//! order rule). One master is SIGKILLed while traffic flows.
//!
//! The checker: every acked message is stored exactly once, each room's
//! `seq` runs 1..n, and each sender's messages (whose text is their
//! zero-padded `client_id`) are stored in send order.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chat_shared::cluster::{slot_of, spread_tag};
use chat_shared::ids::RoomId;
use common::cluster::RedisCluster;
use common::*;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const ROOMS: usize = 8;
const PER_ROOM: usize = 160;
/// One send every 50 ms: 20 msg/s per sender.
const SEND_EVERY: Duration = Duration::from_millis(50);

/// Error codes a sender may get for a message during a failover; each
/// means "not stored, resend".
const RETRYABLE: &[&str] = &["unavailable", "overloaded"];

/// One pipelining sender: sends message `next` every [`SEND_EVERY`] while
/// reading acks in the same loop. On a refusal of index `i` it goes back to
/// `i` and resends from there in order (the gateway refuses everything after
/// `i` until `i` comes again). On a dropped connection it reconnects and
/// resends from the first unacked message. Returns the acked ids in send
/// order.
async fn pipelined_sender(url: String, room: String, tag: String) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let cid = |i: usize| format!("{tag}-{i:04}");
    let mut acked: Vec<Option<String>> = vec![None; PER_ROOM];
    let mut next = 0usize;
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(SEND_EVERY);
    while acked.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "{tag}: {} of {PER_ROOM} never acked",
            acked.iter().filter(|a| a.is_none()).count()
        );
        let Some(c) = client.as_mut() else {
            client = Client::try_join(&url).await;
            if client.is_none() {
                tick.tick().await;
            }
            // Resend everything not acked yet, from the first gap on.
            next = acked.iter().position(Option::is_none).unwrap_or(PER_ROOM);
            continue;
        };
        tokio::select! {
            _ = tick.tick() => {
                // Past the end: resend the first unacked one now and then,
                // in case its refusal or ack was lost with a connection.
                if next >= PER_ROOM {
                    continue;
                }
                let frame = message_frame(&room, &cid(next), &cid(next));
                if c.send_raw(Message::Text(frame.to_string().into())).await.is_err() {
                    client = None;
                    continue;
                }
                next += 1;
            }
            v = c.next_json_within(Duration::from_secs(5)) => {
                let Some(v) = v else {
                    if c.closed.is_some() || next >= PER_ROOM {
                        client = None;
                    }
                    continue;
                };
                let Some(i) = v["data"]["client_id"]
                    .as_str()
                    .and_then(|s| s.strip_prefix(&format!("{tag}-")))
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                match v["type"].as_str() {
                    Some("ack") => acked[i] = Some(v["data"]["id"].as_str().unwrap().to_owned()),
                    Some("error") => {
                        let code = v["data"]["code"].as_str().unwrap_or_default();
                        assert!(RETRYABLE.contains(&code), "{tag}: {v}");
                        next = next.min(i);
                    }
                    _ => {}
                }
            }
        }
    }
    acked.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_senders_lose_nothing_in_a_master_failover_with_replica_acks() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let url = cluster.url();
    let (worker_env, gw_env) = common::cluster::replica_ack_env();
    let _w = start_worker(&url, "w1", &worker_env).await;
    let gws = [
        start_gateway(&url, "gw1", &gw_env).await,
        start_gateway(&url, "gw2", &gw_env).await,
    ];

    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("pfo-{i}")).collect();
    let senders: Vec<_> = rooms
        .iter()
        .enumerate()
        .map(|(i, room)| {
            let url = gws[i % 2].ws_url(&format!("room={room}&username=p{i}"));
            tokio::spawn(pipelined_sender(url, room.clone(), format!("p{i}")))
        })
        .collect();

    // Once traffic flows, kill the master of the first room's stream.
    eventually("traffic persisted", DEADLINE, || async {
        (cluster.stored_records(&rooms[0]).await.len() >= 20).then_some(())
    })
    .await;
    let shard = chat_shared::keys::shard_of(&RoomId::parse(&rooms[0]).unwrap(), 16);
    let stream = format!("chat:stream:{{{}}}", spread_tag(shard, 16));
    let slot = slot_of(stream.as_bytes());
    let victim = cluster.master_of(slot);
    cluster.node(victim).kill();
    eventually("a replica took over", Duration::from_secs(30), || async {
        cluster.try_master_of(slot).filter(|m| *m != victim)
    })
    .await;
    // Back as the new master's replica, so replica acks are possible again.
    cluster.node(victim).restart();
    cluster.wait_ok(Duration::from_secs(30)).await;

    for (room, sender) in rooms.iter().zip(senders) {
        let acked = sender.await.unwrap();
        let stored = stored_with_all(&cluster, room, &acked).await;
        let ids: Vec<&str> = stored.iter().map(|r| r["id"].as_str().unwrap()).collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{room}: a message stored twice");
        let seqs: Vec<u64> = stored.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "{room}: seq 1..n"
        );
        let order: Vec<&str> = stored
            .iter()
            .filter_map(|r| r["message"].as_str())
            .collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "{room}: stored in send order");
    }
}

/// The room's stored records once every id in `acked` is among them; panics
/// naming the missing ones at the deadline.
async fn stored_with_all(cluster: &RedisCluster, room: &str, acked: &[String]) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = cluster.stored_records(room).await;
        let ids: HashSet<&str> = stored.iter().filter_map(|r| r["id"].as_str()).collect();
        let missing: Vec<&String> = acked.iter().filter(|a| !ids.contains(a.as_str())).collect();
        if missing.is_empty() {
            return stored;
        }
        assert!(
            Instant::now() < end,
            "{room}: {} acked messages never stored: {missing:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
