//! Keys and consumers that must not outlive their use (issue 23, path 11):
//! a room's message index gets a TTL even when no worker ever persists to
//! it, the webhook outbox's consumer group forgets workers that are gone,
//! and index entries of messages never stored are removed.

mod common;

use axum::http::StatusCode;
use axum::routing::post;
use common::*;
use redis::AsyncCommands;
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_no_worker_persisted_to_still_expires() {
    let redis = Redis::start().await;
    // No worker: the messages stay in the stream, nothing persists them.
    let gw = start_gateway(&redis.url(), "g1", FAST_GW).await;
    let (mut c, _) = Client::join(&gw.ws_url("room=orphan&username=ana")).await;
    c.send_text(&message_frame("orphan", "hello", "c1").to_string())
        .await;
    c.next_of_type("ack").await;
    let mut conn = redis.conn().await;
    let ttl: i64 = conn.ttl("chat:msg-index:{messages:orphan}").await.unwrap();
    assert!(
        ttl > 0 && ttl <= 86_400,
        "the index of a room no worker persisted has TTL {ttl}"
    );
    // A worker's persist then gives it the history's TTL.
    let _w = start_worker(
        &redis.url(),
        "w1",
        &[("HISTORY_TTL", "600"), ("STREAM_SHARDS", "4")],
    )
    .await;
    eventually("the worker's TTL", DEADLINE, || {
        let mut conn = conn.clone();
        async move {
            let ttl: i64 = conn.ttl("chat:msg-index:{messages:orphan}").await.ok()?;
            (ttl > 0 && ttl <= 600).then_some(())
        }
    })
    .await;
}

/// The consumers of every webhook outbox's `chat-webhooks` group.
async fn webhook_consumers(redis: &Redis, shards: u32) -> Vec<String> {
    let mut conn = redis.conn().await;
    let mut names = Vec::new();
    for shard in 0..shards {
        let info: Result<Vec<HashMap<String, redis::Value>>, _> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(format!("chat:webhooks:{{shard-{shard}}}"))
            .arg("chat-webhooks")
            .query_async(&mut conn)
            .await;
        for c in info.unwrap_or_default() {
            if let Some(redis::Value::BulkString(n)) = c.get("name") {
                names.push(String::from_utf8_lossy(n).into_owned());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_consumers_of_workers_that_are_gone_are_pruned() {
    let app = axum::Router::new().route("/hook", post(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let redis = Redis::start().await;
    let env = [
        FAST_WORKER,
        &[
            ("WEBHOOK_URL", url.as_str()),
            ("READ_BLOCK_MS", "200"),
            ("WEBHOOK_SECRET", "leak-test-secret"),
            // Consumers idle for 10 lease periods (10 s) may go.
            ("LEASE_TTL_MS", "1000"),
        ],
    ]
    .concat();
    let mut old = start_worker(&redis.url(), "old", &env).await;
    // A message, so the outboxes have entries and the senders read them.
    let gw = start_gateway(&redis.url(), "g1", FAST_GW).await;
    let (mut c, _) = Client::join(&gw.ws_url("room=hooked&username=ana")).await;
    c.send_text(&message_frame("hooked", "hello", "c1").to_string())
        .await;
    c.next_of_type("ack").await;
    eventually("the old worker's webhook consumers", DEADLINE, || async {
        webhook_consumers(&redis, 4)
            .await
            .contains(&"old".to_owned())
            .then_some(())
    })
    .await;
    old.proc.sigterm();
    old.proc
        .wait_exit(DEADLINE)
        .await
        .expect("the old worker exits");
    let _new = start_worker(&redis.url(), "new", &env).await;
    let pruned = tokio::time::timeout(DEADLINE * 2, async {
        loop {
            let names = webhook_consumers(&redis, 4).await;
            if !names.contains(&"old".to_owned()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    if pruned.is_err() {
        let mut conn = redis.conn().await;
        let mut info = Vec::new();
        for shard in 0..4 {
            let v: redis::Value = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(format!("chat:webhooks:{{shard-{shard}}}"))
                .arg("chat-webhooks")
                .query_async(&mut conn)
                .await
                .unwrap_or(redis::Value::Nil);
            info.push(format!("{v:?}"));
        }
        let workers: HashMap<String, String> = conn.hgetall("chat:workers").await.unwrap();
        panic!(
            "old consumers not pruned: {info:?}; workers {workers:?}; new worker log: {}",
            _new.proc.log_text()
        );
    }
    server.abort();
}

/// A message id (UUID v7) created `age` ago.
fn id_created_ago(age: std::time::Duration) -> String {
    let at = std::time::SystemTime::now() - age;
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    uuid::Uuid::new_v7(ts).to_string()
}

/// An append that failed with a Redis error leaves its pending index entry
/// (`id → :<author>`): the message may have been stored. When it was not,
/// the entry must not stay for as long as the room is active. Seeded here
/// as such an append leaves it; the janitor removes pending entries older
/// than `INDEX_PENDING_MAX_AGE_MS` and keeps younger ones and every
/// persisted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_entries_of_messages_never_stored_are_removed() {
    let redis = Redis::start().await;
    let worker_env = [FAST_WORKER, &[("INDEX_PENDING_MAX_AGE_MS", "10000")]].concat();
    let _w = start_worker(&redis.url(), "w1", &worker_env).await;
    let gw = start_gateway(&redis.url(), "g1", FAST_GW).await;
    let (mut c, _) = Client::join(&gw.ws_url("room=idx&username=ana")).await;
    let stored = c.acked(message_frame("idx", "stored", "c1")).await;
    let stored_id = stored["id"].as_str().unwrap().to_owned();
    let index = "chat:msg-index:{messages:idx}";
    let mut conn = redis.conn().await;
    eventually("the message persisted", DEADLINE, || {
        let mut conn = conn.clone();
        let id = stored_id.clone();
        async move {
            let v: Option<String> = conn.hget(index, &id).await.ok()?;
            v.filter(|v| !v.starts_with(':')).map(|_| ())
        }
    })
    .await;
    let old = id_created_ago(std::time::Duration::from_secs(120));
    let young = id_created_ago(std::time::Duration::ZERO);
    let _: () = conn
        .hset_multiple(index, &[(&old, ":ana"), (&young, ":ana")])
        .await
        .unwrap();
    // A pass runs every half of the maximum age (5 s here): the one that
    // removes the old entry comes before the young one is 10 s old.
    eventually(
        "the old pending entry removed",
        std::time::Duration::from_secs(30),
        || {
            let mut conn = conn.clone();
            let old = old.clone();
            async move {
                let there: bool = conn.hexists(index, &old).await.ok()?;
                (!there).then_some(())
            }
        },
    )
    .await;
    let left: HashMap<String, String> = conn.hgetall(index).await.unwrap();
    assert_eq!(
        left.get(&young).map(String::as_str),
        Some(":ana"),
        "{left:?}"
    );
    assert!(
        left.get(&stored_id).is_some_and(|v| !v.starts_with(':')),
        "the persisted entry stays: {left:?}"
    );
}
