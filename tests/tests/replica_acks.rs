//! `ACK_AFTER_REPLICAS` with a replica that stops answering (SIGSTOP), on a
//! single Redis with one real replica (issue 23 paths 6 and 7):
//! - the `WAIT` of the gateway's appends must not stall its heartbeats (it
//!   used to share their connections, and the janitor then took the live
//!   gateway for dead);
//! - a resend that finds its `client_id` already stored must not be acked
//!   before the replica holds the original (`WAIT` counts only the writes
//!   of its own connection, and a dedupe hit wrote nothing).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// The worker's `GATEWAY_TIMEOUT_MS` in [`FAST_WORKER`]: a heartbeat older
/// than this gets a gateway evicted.
const GATEWAY_TIMEOUT_MS: i64 = 1500;

/// Starts a replica of `master` and waits until the master sees it online.
async fn start_replica(master: &Redis) -> Redis {
    let replica = Redis::start().await;
    let mut c = replica.conn().await;
    let () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port)
        .query_async(&mut c)
        .await
        .unwrap();
    eventually("the replica online", DEADLINE, || async {
        let mut m = master.conn().await;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut m)
            .await
            .ok()?;
        info.contains("state=online").then_some(())
    })
    .await;
    replica
}

/// A message frame with a `client_id`.
fn frame(room: &str, text: &str, client_id: &str) -> String {
    json!({"type": "message", "data": {"room": room, "message": text, "client_id": client_id}})
        .to_string()
}

/// The answer to the frame with `client_id`: an `ack` or an `error`.
async fn answer(c: &mut Client, client_id: &str) -> Value {
    loop {
        let v = c.next_json().await;
        let kind = v["type"].as_str().unwrap_or_default();
        if (kind == "ack" || kind == "error") && v["data"]["client_id"] == client_id {
            return v;
        }
    }
}

/// Sends until acked (resending after `unavailable`); returns the id.
async fn send_until_acked(c: &mut Client, room: &str, text: &str, cid: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        c.send_text(&frame(room, text, cid)).await;
        let v = answer(c, cid).await;
        if v["type"] == "ack" {
            return v["data"]["id"].as_str().unwrap().to_owned();
        }
        assert_eq!(v["data"]["code"], "unavailable", "{v}");
        assert!(Instant::now() < end, "{cid} never acked");
    }
}

/// The age of `gateway`'s heartbeat on Redis's clock, in ms; `None` when it
/// has none, `Some(i64::MAX)` when the janitor marked it evicted.
async fn heartbeat_age(redis: &Redis, gateway: &str) -> Option<i64> {
    let mut c = redis.conn().await;
    let (beat, time): (Option<i64>, (i64, i64)) = redis::pipe()
        .hget(chat_shared::keys::GATEWAYS, gateway)
        .cmd("TIME")
        .query_async(&mut c)
        .await
        .unwrap();
    let now = time.0 * 1000 + time.1 / 1000;
    beat.map(|b| if b < 0 { i64::MAX } else { now - b })
}

/// Path 6: four senders keep appends waiting on a stopped replica; the
/// gateway's heartbeat stays fresh all along (no eviction), and once the
/// replica is back its connections still get deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_does_not_stall_the_gateways_heartbeat() {
    let master = Redis::start().await;
    let replica = start_replica(&master).await;
    let w = start_worker(&master.url(), "w1", FAST_WORKER).await;
    let gw_env = [
        FAST_GW,
        &[
            ("ACK_AFTER_REPLICAS", "1"),
            ("ACK_REPLICAS_TIMEOUT_MS", "2500"),
            ("REDIS_TIMEOUT_MS", "5000"),
        ],
    ]
    .concat();
    let gw = start_gateway(&master.url(), "gw1", &gw_env).await;
    let room = "slow-replica";
    let (mut listener, _) = Client::join(&gw.ws_url(&format!("room={room}&username=lee"))).await;
    let mut senders = Vec::new();
    for i in 0..4 {
        let (mut c, _) = Client::join(&gw.ws_url(&format!("room={room}&username=s{i}"))).await;
        send_until_acked(&mut c, room, &format!("warm-up-{i}"), &format!("w{i}")).await;
        senders.push(c);
    }
    assert!(heartbeat_age(&master, "gw1").await.unwrap() < GATEWAY_TIMEOUT_MS);

    replica.signal("STOP");
    // Each sender keeps one append waiting on the replica, resending it
    // (same client_id) when it is refused, until it was refused twice.
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                let cid = format!("s{i}");
                for _ in 0..2 {
                    c.send_text(&frame(room, &cid, &cid)).await;
                    let v = answer(&mut c, &cid).await;
                    assert_eq!(v["type"], "error", "acked with the replica stopped: {v}");
                }
                c
            })
        })
        .collect();
    let mut worst = 0;
    let watch_end = Instant::now() + Duration::from_secs(30);
    while !tasks.iter().all(|t| t.is_finished()) {
        assert!(
            Instant::now() < watch_end,
            "the senders were not refused in time"
        );
        let age = heartbeat_age(&master, "gw1").await;
        let age = age.expect("the gateway's heartbeat is still registered");
        worst = worst.max(age);
        assert!(
            age < GATEWAY_TIMEOUT_MS,
            "heartbeat {age} ms old while appends wait on the replica (evicted: {})",
            age == i64::MAX
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("oldest heartbeat seen while the replica was stopped: {worst} ms");
    let mut senders = Vec::new();
    for t in tasks {
        senders.push(t.await.unwrap());
    }
    replica.signal("CONT");
    assert!(
        !w.proc.log_text().contains("Removed dead gateways"),
        "the janitor evicted the gateway"
    );
    // Deliveries still reach the gateway's connections. (The refused
    // message comes back first: until then its sender's later messages
    // would be refused, see DESIGN.md "Send order after a refusal".)
    send_until_acked(&mut senders[0], room, "s0", "s0").await;
    let id = send_until_acked(&mut senders[0], room, "after", "after").await;
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let v = listener
            .next_json_within(left)
            .await
            .expect("the listener gets the message after the replica is back");
        if v["type"] == "message" && v["data"]["id"] == id.as_str() {
            break;
        }
    }
}

/// Path 7: the original (a reaction: on a single Redis a message's append
/// also writes its index entry, which made its `WAIT` cover the original by
/// chance; a room event writes nothing else, and neither does a message on
/// a cluster, whose index lives in another slot) waits on the stopped
/// replica, so its ack does not come. A resend with the same `client_id`
/// through another gateway finds it already stored, and must not be acked
/// either while the replica lacks it. Once the replica is back, the resend
/// is acked with the original's id, and the reaction counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_is_not_acked_before_the_replica_has_the_original() {
    let master = Redis::start().await;
    let replica = start_replica(&master).await;
    let _w = start_worker(
        &master.url(),
        "w1",
        &[("STREAM_SHARDS", "4"), ("GATEWAY_TIMEOUT_MS", "600000")],
    )
    .await;
    // Rare heartbeats: no other write of the gateways moves their
    // connections' replication offsets on while the replica is stopped
    // (a heartbeat's write would make the resend's WAIT wait by chance).
    let gw_env = [
        FAST_GW,
        &[
            ("HEARTBEAT_MS", "120000"),
            ("ACK_AFTER_REPLICAS", "1"),
            ("ACK_REPLICAS_TIMEOUT_MS", "2000"),
            ("REDIS_TIMEOUT_MS", "5000"),
            ("SESSION_SECRET", "a-test-secret-shared-by-both-gateways"),
        ],
    ]
    .concat();
    let gw1 = start_gateway(&master.url(), "gw1", &gw_env).await;
    let gw2 = start_gateway(&master.url(), "gw2", &gw_env).await;
    let room = "resend-replica";
    let (mut c1, _) = Client::join(&gw1.ws_url(&format!("room={room}&username=ana"))).await;
    let session = c1.session_value().await;
    let user = c1.anon_user_id().await;
    let (mut c2, _) =
        Client::join(&gw2.ws_url(&format!("room={room}&username=ana&session={session}"))).await;
    assert_eq!(
        c2.anon_user_id().await,
        user,
        "one user on both connections"
    );
    // Both gateways have written (and had it replicated) before the stop.
    let target = send_until_acked(&mut c1, room, "warm-up-1", "w1").await;
    send_until_acked(&mut c2, room, "warm-up-2", "w2").await;
    let react = |emoji: &str, cid: &str| {
        json!({"type": "react", "data": {
            "room": room, "id": target, "emoji": emoji, "op": "add", "client_id": cid}})
        .to_string()
    };
    // gw2 has run the reaction check's script before: loading it later
    // (`SCRIPT LOAD` is replicated) would be a write of its own.
    c2.send_text(&react("🙂", "r0")).await;
    assert_eq!(answer(&mut c2, "r0").await["type"], "ack");
    let react = react("👍", "x");

    replica.signal("STOP");
    c1.send_text(&react).await;
    // The original is stored on the master (its dedupe marker is there).
    eventually("the original stored on the master", DEADLINE, || async {
        let mut m = master.conn().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("chat:dedupe:*:x")
            .query_async(&mut m)
            .await
            .ok()?;
        (!keys.is_empty()).then_some(())
    })
    .await;
    // The resend, on another connection of another gateway.
    let sent_at = Instant::now();
    c2.send_text(&react).await;
    let resent = answer(&mut c2, "x").await;
    eprintln!("the resend answered after {:?}", sent_at.elapsed());
    assert_eq!(
        resent["data"]["code"], "unavailable",
        "a resend acked while the replica lacks the original: {resent}"
    );
    let first = answer(&mut c1, "x").await;
    assert_eq!(first["data"]["code"], "unavailable", "{first}");

    replica.signal("CONT");
    let id = loop {
        c2.send_text(&react).await;
        let v = answer(&mut c2, "x").await;
        if v["type"] == "ack" {
            break v["data"]["id"].as_str().unwrap().to_owned();
        }
        assert_eq!(v["data"]["code"], "unavailable", "{v}");
    };
    let records = eventually("the reaction persisted", DEADLINE, || async {
        let recs = stored_records(&master, room).await;
        let r = recs.iter().find(|r| r["id"] == target.as_str())?.clone();
        r["reactions"].get("👍").is_some().then_some(r)
    })
    .await;
    assert_eq!(records["reactions"]["👍"], 1, "counted once: {records}");
    assert!(!id.is_empty());
}
