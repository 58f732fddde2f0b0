//! The janitor evicts a killed gateway through its room index
//! (`chat:gateway-rooms:{<gateway>}`), visiting that gateway's rooms only:
//! with the full sweep pushed out of the test's time (`JANITOR_FULL_SWEEP_MS`),
//! the killed gateway's entries still go within the janitor's bound, the
//! other active rooms are not visited, and the index goes with the eviction.
//! A gateway that stops cleanly deletes its index.

mod common;

use std::collections::BTreeSet;

use common::*;
use redis::AsyncCommands;

async fn members(c: &mut redis::aio::MultiplexedConnection, key: &str) -> BTreeSet<String> {
    c.smembers(key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_is_evicted_through_its_room_index() {
    let redis = Redis::start().await;
    let mut c = redis.conn().await;
    // 300 other active rooms (with history, so no sweep would retire them).
    for i in 0..300 {
        let room = format!("other{i}");
        let _: () = c.rpush(format!("messages:{room}"), "{}").await.unwrap();
        let _: () = c.sadd("rooms:active", &room).await.unwrap();
    }
    let worker_env: Vec<_> = FAST_WORKER
        .iter()
        .copied()
        .chain([("JANITOR_FULL_SWEEP_MS", "600000")])
        .collect();
    let w = start_worker(&redis.url(), "w1", &worker_env).await;
    let mut g1 = start_gateway(&redis.url(), "g1", FAST_GW).await;
    let mut g2 = start_gateway(&redis.url(), "g2", FAST_GW).await;

    let mut held = Vec::new();
    for room in ["a", "b", "c"] {
        held.push(
            Client::join(&g1.ws_url(&format!("room={room}&username=u{room}")))
                .await
                .0,
        );
    }
    let (mut bo, _) = Client::join(&g2.ws_url("room=b&username=bo")).await;
    let (_dee, _) = Client::join(&g2.ws_url("room=d&username=dee")).await;
    let want = |rs: &[&str]| rs.iter().map(|r| (*r).to_owned()).collect::<BTreeSet<_>>();
    assert_eq!(
        members(&mut c, "chat:gateway-rooms:{g1}").await,
        want(&["a", "b", "c"])
    );
    assert_eq!(
        members(&mut c, "chat:gateway-rooms:{g2}").await,
        want(&["b", "d"])
    );

    g1.proc.kill9();
    drop(held);
    eventually("g1's entries evicted through its index", DEADLINE, || {
        let redis = &redis;
        async move {
            let mut c = redis.conn().await;
            for room in ["a", "b", "c"] {
                let conns: Vec<String> = c.smembers(format!("connections:{room}")).await.ok()?;
                if conns.iter().any(|m| m.starts_with("g1/")) {
                    return None;
                }
                let gws: Vec<String> = c
                    .hkeys(format!("chat:room-gateways:{{connections:{room}}}"))
                    .await
                    .ok()?;
                if gws.iter().any(|g| g == "g1") {
                    return None;
                }
            }
            let index: bool = c.exists("chat:gateway-rooms:{g1}").await.ok()?;
            (!index).then_some(())
        }
    })
    .await;
    // Only g1's three rooms were visited; the full sweep did not run again.
    let log = w.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("through their room indexes"))
        .unwrap_or_else(|| panic!("no index eviction logged:\n{log}"));
    assert!(line.contains("rooms_visited=3"), "{line}");
    assert!(line.contains("removed_conns=3"), "{line}");
    // g2 is untouched and still delivers in the shared room.
    assert_eq!(
        members(&mut c, "chat:gateway-rooms:{g2}").await,
        want(&["b", "d"])
    );
    bo.say("b", "still here", "b1").await;
    assert_eq!(bo.messages(1).await[0]["message"], "still here");
    let conns: Vec<String> = c.smembers("connections:b").await.unwrap();
    assert!(conns.len() == 1 && conns[0].starts_with("g2/"), "{conns:?}");

    // A clean stop deletes the index.
    g2.proc.sigterm();
    assert!(g2
        .proc
        .wait_exit(DEADLINE)
        .await
        .is_some_and(|s| s.success()));
    let index: bool = c.exists("chat:gateway-rooms:{g2}").await.unwrap();
    assert!(!index);
}
