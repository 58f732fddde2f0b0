//! The fan-out worker under network faults and operator mistakes (issue 23,
//! paths 1, 9 and 11), each forced for real with the fault-injecting proxy
//! (`chat_tests::fault_proxy`) between the worker and a real redis-server:
//! a stray fenced read of an older connection that runs late, entries of a
//! newer envelope version held with no newer worker coming, and the keys and
//! consumers that leaked.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chat_shared::keys;
use chat_tests::fault_proxy::FaultProxy;
use common::*;
use redis::AsyncCommands;
use serde_json::Value;

/// How the fenced read script's `read` mode argument looks on the wire: it
/// matches the shard's fenced reads and nothing else.
const FENCED_READ: &[u8] = b"$4\r\nread\r\n";

/// A redis-server and a proxy in front of it.
async fn redis_behind_proxy() -> (Redis, FaultProxy) {
    let redis = Redis::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    (redis, proxy)
}

/// The texts in `messages:<room>`, oldest first.
async fn history_texts(c: &mut redis::aio::MultiplexedConnection, room: &str) -> Vec<String> {
    let raw: Vec<String> = c.lrange(format!("messages:{room}"), 0, -1).await.unwrap();
    raw.iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r).unwrap();
            v["message"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// How many entries are pending in `group` of `stream`.
async fn pending_count(c: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    let summary: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg(stream)
        .arg(keys::CONSUMER_GROUP)
        .query_async(c)
        .await
        .unwrap();
    summary.0
}

/// Sends `text` with a `client_id` and waits for its ack.
async fn send_acked(client: &mut Client, room: &str, text: &str) {
    client.say(room, text, text).await;
    let ack = client.next_of_type("ack").await;
    assert_eq!(ack["data"]["client_id"], text, "ack of {text}: {ack}");
}

/// Path 1: a fenced read stalls on its way to Redis past the worker's
/// response timeout; the worker gives up on that connection, reconnects and
/// reads on; then the stalled read reaches Redis, still under this worker's
/// lease, and takes an entry the new connection has not read yet into the
/// pending list. A later entry of the same room is persisted first, and the
/// next claim pass used to take the stranded entry for a duplicate (it is
/// older than the room's last persisted entry) and ack it away: acked,
/// never in history, no `seq` gap.
///
/// The interleaving the outside tester missed: the late read only strands
/// an entry if one is waiting in the stream, unread, at the moment it runs;
/// an idle worker reads every entry within a millisecond. So the new
/// connection's next read is stalled too (shorter than the response
/// timeout, so the worker waits for it), across the moment the first one
/// is forwarded, and the entry is sent just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_late_read_of_an_older_connection_loses_no_acked_message() {
    let (redis, proxy) = redis_behind_proxy().await;
    // Response timeout of the shard connection: READ_BLOCK_MS (200) +
    // REDIS_TIMEOUT_MS = 3.2 s. The lease outlives the whole dance.
    let env = [
        ("STREAM_SHARDS", "1"),
        ("LEASE_TTL_MS", "8000"),
        ("REDIS_TIMEOUT_MS", "3000"),
    ];
    let _w = start_worker(&format!("redis://{}", proxy.addr()), "w1", &env).await;
    let gw = start_gateway(&redis.url(), "gw1", &[("STREAM_SHARDS", "1")]).await;
    let room = "stray";
    let (mut client, _) = Client::join(&gw.ws_url(&format!("room={room}"))).await;
    let mut c = redis.conn().await;
    send_acked(&mut client, room, "m0").await;
    assert_eq!(client.messages(1).await[0]["message"], "m0");

    // The next fenced read stalls for 5 s, longer than the 3.2 s timeout.
    let (reads, opens) = (proxy.seen(FENCED_READ), proxy.seen(b"XGROUP"));
    let mut late = proxy.stall_next(FENCED_READ, Duration::from_secs(5));
    eventually(
        "the worker reconnected and read on a new connection",
        DEADLINE,
        || {
            let ok = proxy.seen(b"XGROUP") > opens && proxy.seen(FENCED_READ) > reads;
            async move { ok.then_some(()) }
        },
    )
    .await;
    assert!(
        !late.has_fired(),
        "the stalled read ran before the worker reconnected"
    );
    // Hold the new connection's next read across the late one (2.5 s, less
    // than the timeout), and give the late one an unread entry to take.
    let mut held = proxy.stall_next(FENCED_READ, Duration::from_millis(2500));
    send_acked(&mut client, room, "m1").await;
    late.wait(DEADLINE).await;
    let stranded = pending_count(&mut c, &keys::stream(0)).await;
    held.wait(DEADLINE).await;
    // A later entry of the same room, persisted before any claim pass.
    send_acked(&mut client, room, "m2").await;

    let stream = keys::stream(0);
    eventually(
        "m2 persisted and nothing left pending",
        DEADLINE * 2,
        || {
            let mut c = c.clone();
            let stream = &stream;
            async move {
                let texts = history_texts(&mut c, room).await;
                let done =
                    texts.iter().any(|t| t == "m2") && pending_count(&mut c, stream).await == 0;
                done.then_some(())
            }
        },
    )
    .await;
    let texts = history_texts(&mut c, room).await;
    assert_eq!(
        texts,
        ["m0", "m1", "m2"],
        "history after a stray late read (entries the late read stranded: {stranded})"
    );
    let live: Vec<String> = client
        .messages(2)
        .await
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(live, ["m1", "m2"]);
}

/// A stream entry as a gateway writes it.
fn envelope(room: &str, text: &str) -> Vec<u8> {
    chat_shared::envelope::StreamEntry {
        v: chat_shared::envelope::VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        room: room.into(),
        username: "tester".into(),
        message: text.into(),
        timestamp: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        stamped_us: chrono::Utc::now().timestamp_micros(),
        ..Default::default()
    }
    .encode()
}

/// Path 1, the persistence side: an entry that reaches the holder after a
/// later entry of its room was persisted (here stranded in another
/// consumer's pending list, as a stray read would leave it) is persisted
/// when it is claimed, not acked away as a duplicate because it is older
/// than the room's last persisted entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_older_than_its_rooms_last_persisted_one_is_not_taken_for_a_duplicate() {
    let redis = Redis::start().await;
    let env = [("STREAM_SHARDS", "1"), ("LEASE_TTL_MS", "2000")];
    let _w = start_worker(&redis.url(), "w1", &env).await;
    let gw = start_gateway(&redis.url(), "gw1", &[("STREAM_SHARDS", "1")]).await;
    let room = "late";
    let (mut client, _) = Client::join(&gw.ws_url(&format!("room={room}"))).await;
    let mut c = redis.conn().await;
    let stream = keys::stream(0);
    send_acked(&mut client, room, "m0").await;
    client.messages(1).await;

    // In one transaction, so the worker's waiting read cannot take it first.
    let (_, read): (String, redis::Value) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(chat_shared::envelope::STREAM_FIELD)
        .arg(envelope(room, "stranded"))
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg(keys::CONSUMER_GROUP)
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_ne!(read, redis::Value::Nil, "the ghost consumer took the entry");
    send_acked(&mut client, room, "after").await;
    eventually("nothing left pending", DEADLINE, || {
        let mut c = c.clone();
        let stream = &stream;
        async move { (pending_count(&mut c, stream).await == 0).then_some(()) }
    })
    .await;
    let texts = history_texts(&mut c, room).await;
    assert_eq!(texts, ["m0", "after", "stranded"]);
    let applied: u64 = c
        .zcard(keys::applied(
            &chat_shared::ids::RoomId::parse(room).unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(applied, 0, "acked entries stay in the applied record");
}

/// A stream entry of envelope version `v`.
fn envelope_v(v: u8, room: &str, text: &str) -> Vec<u8> {
    let mut e = chat_shared::envelope::StreamEntry::decode(&envelope(room, text)).unwrap();
    e.v = v;
    e.encode()
}

/// How many times the entry `id` of `stream` was delivered (read or
/// claimed) in the fan-out group.
async fn times_delivered(c: &mut redis::aio::MultiplexedConnection, stream: &str, id: &str) -> u64 {
    let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(keys::CONSUMER_GROUP)
        .arg(id)
        .arg(id)
        .arg(1)
        .query_async(c)
        .await
        .unwrap();
    rows.first().map_or(0, |r| r.3)
}

/// Path 9: entries of a newer envelope version with no newer worker coming
/// (a rolled-back upgrade). They are counted per shard
/// (`chat_worker_held_entries`), not claimed again every lease period, and
/// `chat-fanout-worker release-held --shard 0` drops them and lets their
/// room's held messages through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_entries_are_counted_left_alone_and_released_by_a_command() {
    let redis = Redis::start().await;
    let lease = Duration::from_millis(1000);
    let env = [("STREAM_SHARDS", "1"), ("LEASE_TTL_MS", "1000")];
    let w = start_worker(&redis.url(), "w1", &env).await;
    let gw = start_gateway(&redis.url(), "gw1", &[("STREAM_SHARDS", "1")]).await;
    let room = "future";
    let (mut client, _) = Client::join(&gw.ws_url(&format!("room={room}"))).await;
    let mut c = redis.conn().await;
    let stream = keys::stream(0);
    let newer: String = c
        .xadd(
            &stream,
            "*",
            &[(
                chat_shared::envelope::STREAM_FIELD,
                envelope_v(
                    chat_shared::envelope::NEWEST_ENTRY_VERSION + 1,
                    room,
                    "from a newer version",
                ),
            )],
        )
        .await
        .unwrap();
    send_acked(&mut client, room, "behind").await;
    let series = r#"chat_worker_held_entries{shard="0"}"#;
    wait_metric(&w.addr(), series, 2.0).await;

    // Four lease periods: periodic claim passes leave the held entries alone
    // (each claim would count as a delivery).
    tokio::time::sleep(lease * 4).await;
    assert_eq!(
        times_delivered(&mut c, &stream, &newer).await,
        1,
        "the held entry was claimed again by periodic claim passes"
    );

    let out = tokio::process::Command::new(bin_path("chat-fanout-worker"))
        .arg("release-held")
        .arg("--shard")
        .arg("0")
        .env_clear()
        .env("REDIS_URL", redis.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), newer, "the released ids");

    // The holder reconnects, holds nothing, and lets the room flow.
    assert_eq!(client.messages(1).await[0]["message"], "behind");
    assert_eq!(history_texts(&mut c, room).await, ["behind"]);
    wait_metric(&w.addr(), series, 0.0).await;
    eventually("nothing left pending", DEADLINE, || {
        let mut c = c.clone();
        let stream = &stream;
        async move { (pending_count(&mut c, stream).await == 0).then_some(()) }
    })
    .await;
    let left: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg(&newer)
        .arg(&newer)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(left.is_empty(), "the released entry is deleted");
}

/// A worker renews all its leases at once. Renewed one after the other, 16
/// leases took 16 round trips: with 150 ms of latency on the way to Redis
/// (`LEASE_TTL_MS` 3000: a lease is used for 2,250 ms after its renewal
/// was sent), each lease's next renewal came ~2.7 s after the last, its
/// clock lapsed, and its shard stopped though no other worker wanted it
/// (the nemesis saw leases churn hundreds of times per schedule on a busy
/// machine, and shards whose batches never finished).
#[tokio::test]
async fn a_slow_redis_does_not_make_a_worker_drop_its_leases() {
    let (_redis, proxy) = redis_behind_proxy().await;
    let url = format!("redis://{}", proxy.addr());
    let env = [("STREAM_SHARDS", "16"), ("LEASE_TTL_MS", "3000")];
    let worker = start_worker(&url, "w1", &env).await;
    wait_metric(&worker.addr(), "chat_worker_shards_owned", 16.0).await;

    proxy.set_latency(Duration::from_millis(150));
    // Each supervisor round writes and reads the worker registry once.
    let before = proxy.seen(keys::WORKERS.as_bytes());
    eventually(
        "ten supervisor rounds under latency",
        Duration::from_secs(90),
        || async { (proxy.seen(keys::WORKERS.as_bytes()) >= before + 20).then_some(()) },
    )
    .await;
    proxy.set_latency(Duration::ZERO);
    let log = worker.proc.log_text();
    let stopped = log
        .lines()
        .filter(|l| l.contains("Shard processing stopped"))
        .count();
    assert_eq!(stopped, 0, "shards stopped under latency:\n{log}");
    wait_metric(&worker.addr(), "chat_worker_shards_owned", 16.0).await;
}

/// A fenced read that ran, on a cluster, whose reply was lost with its
/// connection: redis-rs's cluster client used to send it again on a new
/// connection, and the second read found nothing new. The entries the
/// first one moved into the worker's pending list were never processed by
/// it (its re-claim passes skip its own entries), later messages of the room
/// were stored before them, and a newer holder stored them out of order
/// (nemesis cluster seed 3003: `sender_order`). Now the worker's own
/// connections never re-send: the error makes it reconnect, and its claim
/// pass takes the entries in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_read_whose_reply_is_lost_on_a_cluster_is_not_sent_again() {
    use chat_shared::cluster::{slot_of, spread_tag};
    use chat_shared::ids::RoomId;
    use chat_tests::fault_proxy::Reply;
    use common::cluster::RedisCluster;
    use common::store::Store;

    let store = Store::Cluster(RedisCluster::start_proxied(3, 0).await);
    let Store::Cluster(cluster) = &store else {
        unreachable!()
    };
    let url = cluster.url();
    let shards_env = [("STREAM_SHARDS", "16")];
    let gw = start_gateway(&url, "gw1", &[FAST_GW, &shards_env].concat()).await;
    let room = "orphan-c";
    let (mut c, _) = Client::join(&gw.ws_url(&format!("room={room}&username=ana"))).await;
    // Appended before any worker runs: its first read returns all three.
    for text in ["m1", "m2", "m3"] {
        send_acked(&mut c, room, text).await;
    }

    // The shard's fenced read (not its claim, not another shard's read) of
    // worker w1 with the default batch size.
    let shard = keys::shard_of(&RoomId::parse(room).unwrap(), 16);
    let tag = spread_tag(shard, 16);
    let read = format!(
        "chat:fence:{{{tag}}}:chat-fanout\r\n$2\r\nw1\r\n$11\r\nchat-fanout\r\n$3\r\n512\r\n$4\r\nread\r\n"
    );
    let stream_slot = slot_of(format!("chat:stream:{{{tag}}}").as_bytes());
    let proxy = cluster.proxy(cluster.master_of(stream_slot));
    let mut fired = proxy.reset_after_next(read.as_bytes(), Reply::Drop);
    let _w = start_worker(&url, "w1", &shards_env).await;
    fired.wait(DEADLINE).await;

    send_acked(&mut c, room, "m4").await;
    let texts = eventually("m4 persisted", DEADLINE, || async {
        let texts: Vec<String> = store
            .stored_records(room)
            .await
            .iter()
            .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
            .collect();
        texts.iter().any(|t| t == "m4").then_some(texts)
    })
    .await;
    assert_eq!(
        texts,
        ["m1", "m2", "m3", "m4"],
        "stored in send order, once"
    );
}
