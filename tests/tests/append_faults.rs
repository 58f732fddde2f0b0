//! Appends under network faults, forced with the fault proxy
//! (`chat_tests::fault_proxy`) between the gateway and Redis: a connection
//! reset right after Redis ran an append script, and an error in one slot
//! run of a cluster append pipeline. Each test asserts on what the sender
//! was told and on what the room's history holds: an acked message is
//! stored exactly once, and its index entry (edits) still works.

mod common;

use std::net::SocketAddr;

use chat_shared::cluster::{slot_of, spread_tag};
use chat_shared::ids::RoomId;
use chat_tests::fault_proxy::{FaultProxy, Reply, Trigger};
use common::cluster::RedisCluster;
use common::store::Store;
use common::*;
use serde_json::{json, Value};

const SHARDS: u32 = 16;

/// The gateways' and workers' settings on a cluster.
fn cluster_env() -> Vec<(&'static str, &'static str)> {
    [FAST_GW, &[("STREAM_SHARDS", "16")]].concat()
}

/// The slot of `room`'s stream shard on a cluster of 16 shards.
fn stream_slot(room: &str) -> u16 {
    let shard = chat_shared::keys::shard_of(&RoomId::parse(room).unwrap(), SHARDS);
    slot_of(format!("chat:stream:{{{}}}", spread_tag(shard, SHARDS)).as_bytes())
}

/// The slot of `room`'s message index.
fn index_slot(room: &str) -> u16 {
    slot_of(chat_shared::keys::message_index(&RoomId::parse(room).unwrap()).as_bytes())
}

/// A message frame, with or without a `client_id`.
fn frame(room: &str, text: &str, client_id: Option<&str>) -> String {
    let mut data = json!({"room": room, "message": text});
    if let Some(cid) = client_id {
        data["client_id"] = cid.into();
    }
    json!({"type": "message", "data": data}).to_string()
}

/// The sender's answer to its frame with `client_id` (`None`: the next ack
/// or error without one): an `ack` or an `error` frame.
async fn answer(c: &mut Client, client_id: Option<&str>) -> Value {
    loop {
        let v = c.next_json().await;
        let kind = v["type"].as_str().unwrap_or_default();
        if (kind == "ack" || kind == "error") && v["data"]["client_id"].as_str() == client_id {
            return v;
        }
    }
}

/// Sends `text` until it is acked, resending with the same `client_id`
/// after `unavailable`; returns the acked id and how many answers were
/// refusals.
async fn send_until_acked(c: &mut Client, room: &str, text: &str, cid: &str) -> (String, usize) {
    let mut refused = 0;
    loop {
        c.send_text(&frame(room, text, Some(cid))).await;
        let v = answer(c, Some(cid)).await;
        if v["type"] == "ack" {
            return (v["data"]["id"].as_str().unwrap().to_owned(), refused);
        }
        assert_eq!(v["data"]["code"], "unavailable", "{v}");
        refused += 1;
        assert!(refused < 50, "{cid} never acked");
    }
}

/// Waits until a sentinel sent after everything else is in history (the
/// worker persists a room in order), then returns the room's records.
async fn settled_records(c: &mut Client, room: &str, store: &Store) -> Vec<Value> {
    let (sentinel, _) = send_until_acked(c, room, "sentinel", "sentinel").await;
    eventually("the sentinel persisted", DEADLINE, || {
        let sentinel = sentinel.clone();
        async move {
            let recs = store.stored_records(room).await;
            recs.iter()
                .any(|r| r["id"] == sentinel.as_str())
                .then_some(recs)
        }
    })
    .await
}

/// How many records hold `text`.
fn copies(records: &[Value], text: &str) -> usize {
    records.iter().filter(|r| r["message"] == text).count()
}

/// Edits `id` and returns the answer (an `ack`, or an `error`).
async fn edit(c: &mut Client, room: &str, id: &str, cid: &str) -> Value {
    let f = json!({"type":"edit","data":{"room":room,"id":id,"message":"edited","client_id":cid}});
    c.send_text(&f.to_string()).await;
    answer(c, Some(cid)).await
}

/// One append meets the fault `arm` sets up for the message whose text it
/// is given (the fault fires once); the message is stored once (whatever
/// the sender was told), a resend with the same `client_id` is acked with
/// the stored message's id, and that id's index entry still works (an edit
/// is acked). A message without `client_id` is stored once too.
async fn fault_stores_once(gw: &Gateway, store: &Store, room: &str, arm: impl Fn(&str) -> Trigger) {
    let (mut c, _) = Client::join(&gw.ws_url(&format!("room={room}&username=ana"))).await;
    // Traffic flows before the fault (scripts loaded, connections open).
    send_until_acked(&mut c, room, "warm-up", "warm-up").await;

    // With a client_id.
    let mut fired = arm("with-cid");
    c.send_text(&frame(room, "with-cid", Some("c1"))).await;
    let first = answer(&mut c, Some("c1")).await;
    fired.wait(DEADLINE).await;
    assert!(
        first["type"] == "ack" || first["data"]["code"] == "unavailable",
        "ack or unavailable: {first}"
    );
    let (id, _) = send_until_acked(&mut c, room, "with-cid", "c1").await;
    if first["type"] == "ack" {
        assert_eq!(first["data"]["id"], id.as_str(), "one id for c1");
    }

    // Without a client_id.
    let mut fired = arm("no-cid");
    c.send_text(&frame(room, "no-cid", None)).await;
    let bare = answer(&mut c, None).await;
    fired.wait(DEADLINE).await;
    assert!(
        bare["type"] == "ack" || bare["data"]["code"] == "unavailable",
        "ack or unavailable: {bare}"
    );

    let recs = settled_records(&mut c, room, store).await;
    assert_eq!(copies(&recs, "with-cid"), 1, "c1 stored once: {recs:?}");
    assert_eq!(copies(&recs, "no-cid"), 1, "stored once: {recs:?}");
    let stored = recs.iter().find(|r| r["message"] == "with-cid").unwrap();
    assert_eq!(stored["id"], id.as_str(), "acked id is the stored one");
    let edited = edit(&mut c, room, &id, "e1").await;
    assert_eq!(
        edited["type"], "ack",
        "the acked message can be edited: {edited}"
    );
}

/// Path 2 of issue 23 on a cluster: the append script runs, then the
/// gateway's connection to that master is reset before the reply. redis-rs's
/// cluster client used to send the script again on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_append_script_ran_stores_it_once_on_a_cluster() {
    let store = Store::Cluster(RedisCluster::start_proxied(3, 0).await);
    let Store::Cluster(cluster) = &store else {
        unreachable!()
    };
    let url = cluster.url();
    let _w = start_worker(&url, "w1", &[("STREAM_SHARDS", "16")]).await;
    let gw = start_gateway(&url, "gw1", &cluster_env()).await;
    let room = "reset-c";
    let proxy = cluster.proxy(cluster.master_of(stream_slot(room)));
    fault_stores_once(&gw, &store, room, |text| {
        proxy.reset_after_next(text.as_bytes(), Reply::Drop)
    })
    .await;
}

/// The same on a single Redis: `ConnectionManager` does not re-send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_append_script_ran_stores_it_once_on_one_redis() {
    let redis = Redis::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let gw = start_gateway(&format!("redis://{}", proxy.addr()), "gw1", FAST_GW).await;
    let store = Store::Single(Box::new(redis));
    fault_stores_once(&gw, &store, "reset-s", |text| {
        proxy.reset_after_next(text.as_bytes(), Reply::Drop)
    })
    .await;
}

/// A partial failure of one slot run, with `ACK_AFTER_REPLICAS=1` on 3
/// masters + 3 replicas: in the run `EVALSHA` + `WAIT`, the script runs and
/// the `WAIT` is answered with an error that asks for a retry (`TRYAGAIN`;
/// the same holds for a redirect or `CLUSTERDOWN`). redis-rs used to re-send
/// the whole run, so the script ran twice: a message without `client_id`
/// was stored twice, and one with a `client_id` was acked as its own repeat
/// and its index entry removed (edits got `not_found`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_part_of_a_slot_run_stores_once_and_acks_only_what_is_stored() {
    let store = Store::Cluster(RedisCluster::start_proxied(3, 1).await);
    let Store::Cluster(cluster) = &store else {
        unreachable!()
    };
    let url = cluster.url();
    // Only the gateway sends WAIT: the worker acks without replicas.
    let _w = start_worker(&url, "w1", &[("STREAM_SHARDS", "16")]).await;
    let gw_env = [
        &cluster_env()[..],
        &[
            ("ACK_AFTER_REPLICAS", "1"),
            ("ACK_REPLICAS_TIMEOUT_MS", "1000"),
        ],
    ]
    .concat();
    let gw = start_gateway(&url, "gw1", &gw_env).await;
    let room = "partial-run";
    assert_ne!(stream_slot(room), index_slot(room));
    let proxy = cluster.proxy(cluster.master_of(stream_slot(room)));
    fault_stores_once(&gw, &store, room, |_| {
        proxy.fail_next(b"$4\r\nWAIT\r\n", "TRYAGAIN injected")
    })
    .await;
}
