//! Bounded Redis growth from anonymous clients: the room-creation budget
//! and the byte cap of one room's history.

mod common;

use common::*;
use redis::AsyncCommands;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rooms_spend_a_budget_and_existing_rooms_do_not() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    // Three new rooms, then one per 100 s: nothing refills during the test.
    let gw = start_gateway(
        &redis.url(),
        "gw1",
        &[
            ("ROOM_CREATION_PER_MIN", "0.6"),
            ("ROOM_CREATION_BURST", "3"),
        ],
    )
    .await;
    for i in 0..3 {
        let room = format!("new-{i}");
        let (mut c, _) = Client::join(&gw.ws_url(&format!("room={room}"))).await;
        c.say(&room, "hello", "c").await;
        c.next_of_type("ack").await;
    }
    let (mut c, _) = Client::join(&gw.ws_url("room=new-3")).await;
    c.say("new-3", "hello", "over").await;
    let err = c.next_of_type("error").await;
    assert_eq!(err["data"]["code"], "rate_limited");
    assert_eq!(err["data"]["client_id"], "over");
    assert!(err["data"]["message"]
        .as_str()
        .unwrap()
        .contains("new rooms"));
    let mut r = redis.conn().await;
    let exists: bool = r.exists("messages:new-3").await.unwrap();
    assert!(!exists, "the refused message created nothing");
    // A room that exists costs nothing, on a new connection too.
    eventually("the first room is persisted", DEADLINE, || {
        let mut r = r.clone();
        async move {
            r.exists::<_, bool>("chat:room:{messages:new-0}")
                .await
                .ok()?
                .then_some(())
        }
    })
    .await;
    let (mut again, _) = Client::join(&gw.ws_url("room=new-0")).await;
    again.say("new-0", "again", "a").await;
    assert_eq!(again.next_of_type("ack").await["data"]["client_id"], "a");
    assert_eq!(
        metric(&gw.addr(), "chat_gateway_room_creations_refused_total").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_history_is_capped_in_bytes_oldest_first() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[("HISTORY_MAX_BYTES", "2000")]).await;
    let gw = start_gateway(&redis.url(), "gw1", &[("RATE_LIMIT_BURST", "100")]).await;
    let (mut c, _) = Client::join(&gw.ws_url("room=big")).await;
    let text = "x".repeat(300);
    for i in 0..20 {
        c.say("big", &text, &format!("c{i}")).await;
        c.next_of_type("ack").await;
    }
    let mut r = redis.conn().await;
    let records = eventually("the last message is stored", DEADLINE, || {
        let mut r = r.clone();
        async move {
            let raw: Vec<String> = r.lrange("messages:big", 0, -1).await.ok()?;
            let last = raw
                .last()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())?;
            (last["seq"] == 20).then_some(raw)
        }
    })
    .await;
    let bytes: usize = records.iter().map(String::len).sum();
    assert!(bytes <= 2000, "history holds {bytes} bytes");
    let seqs: Vec<u64> = records
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let first = seqs[0];
    assert!(first > 1, "the oldest went first");
    assert_eq!(seqs, (first..=20).collect::<Vec<_>>(), "still contiguous");
    let counted: usize = r.hget("chat:room:{messages:big}", "bytes").await.unwrap();
    assert_eq!(counted, bytes, "the running total matches the list");
}
