//! Large rooms against real processes (two gateways, a worker, Redis) with
//! `PRESENCE_EVENTS_MAX_MEMBERS=3`: per-user `join` / `leave` up to 3
//! distinct users, above it `presence_count` with the right count, never
//! per-user events, at most one per second, none when the count is back to
//! the last one sent; the janitor's removal of a killed gateway's users
//! sends a count too; back at 3 users, `leave` resumes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MAX: (&str, &str) = ("PRESENCE_EVENTS_MAX_MEMBERS", "3");

/// A frame with the time it arrived.
struct Seen {
    at: Instant,
    v: Value,
}

/// Frames until one matches `stop` (included).
async fn until(c: &mut Client, stop: impl Fn(&Value) -> bool) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        let v = c.next_json().await;
        let done = stop(&v);
        seen.push(Seen {
            at: Instant::now(),
            v,
        });
        if done {
            return seen;
        }
    }
}

fn is_count(v: &Value, n: u64) -> bool {
    v["type"] == "presence_count" && v["data"]["count"] == n && v["data"]["room"] == "big"
}

fn per_user(seen: &[Seen]) -> Vec<&Value> {
    seen.iter()
        .map(|s| &s.v)
        .filter(|v| v["type"] == "join" || v["type"] == "leave")
        .collect()
}

fn counts(seen: &[Seen]) -> Vec<(Instant, u64)> {
    seen.iter()
        .filter(|s| s.v["type"] == "presence_count")
        .map(|s| (s.at, s.v["data"]["count"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_threshold_a_room_gets_a_throttled_count_instead_of_joins_and_leaves() {
    let redis = Redis::start().await;
    let worker_env: Vec<_> = FAST_WORKER.iter().copied().chain([MAX]).collect();
    let gw_env: Vec<_> = FAST_GW.iter().copied().chain([MAX]).collect();
    let _w = start_worker(&redis.url(), "w1", &worker_env).await;
    let gw1 = start_gateway(&redis.url(), "g1", &gw_env).await;
    let mut gw2 = start_gateway(&redis.url(), "g2", &gw_env).await;
    let url1 = |name: &str| gw1.ws_url(&format!("room=big&username={name}"));
    let url2 = |name: &str| gw2.ws_url(&format!("room=big&username={name}"));

    // Up to 3 users: per-user joins, as before.
    let (mut obs, _) = Client::join_ephemeral(&url1("obs")).await;
    let (_u1, _) = Client::join_ephemeral(&url1("u1")).await;
    let seen = until(&mut obs, |v| v["type"] == "join").await;
    assert_eq!(seen.last().unwrap().v["data"]["username"], "u1");
    let (_u2, _) = Client::join_ephemeral(&url2("u2")).await;
    let seen = until(&mut obs, |v| v["type"] == "join").await;
    assert_eq!(seen.last().unwrap().v["data"]["username"], "u2");
    assert!(counts(&seen).is_empty());

    // The 4th user: a count (not throttled: the first one), no join.
    let (_u3, _) = Client::join_ephemeral(&url2("u3")).await;
    let seen = until(&mut obs, |v| is_count(v, 4)).await;
    assert!(per_user(&seen).is_empty(), "{:?}", per_user(&seen));

    // Two more at once: held by the throttle, sent when the second ends.
    let (_u4, _) = Client::join_ephemeral(&url1("u4")).await;
    let (_u5, _) = Client::join_ephemeral(&url2("u5")).await;
    let mut all = seen;
    all.extend(until(&mut obs, |v| is_count(v, 6)).await);
    assert!(per_user(&all).is_empty(), "{:?}", per_user(&all));
    let sent = counts(&all);
    for pair in sent.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(900),
            "two counts {gap:?} apart"
        );
        assert_ne!(pair[0].1, pair[1].1, "a count sent twice unchanged");
    }
    eprintln!(
        "counts received: {:?}",
        sent.iter().map(|c| c.1).collect::<Vec<_>>()
    );

    // A user that comes and goes within the throttle window leaves the count
    // as last sent: nothing is sent.
    let window = Instant::now();
    let u6 = Client::join_ephemeral(&url1("u6")).await.0;
    u6.close().await;
    wait_users(&gw1, 6).await;
    assert!(
        window.elapsed() < Duration::from_millis(800),
        "u6 came and went too slowly for this check: {:?}",
        window.elapsed()
    );
    let mut quiet = Vec::new();
    while let Some(v) = obs.next_json_within(Duration::from_millis(2500)).await {
        quiet.push(v);
    }
    assert!(
        quiet
            .iter()
            .all(|v| v["type"] != "presence_count" && v["type"] != "join" && v["type"] != "leave"),
        "{quiet:?}"
    );

    // A killed gateway's users (u2, u3, u5) are removed by the janitor: one
    // count from the worker, no per-user leave... unless the room is small
    // again. 6 − 3 = 3 is at the threshold, so leaves resume; first bring
    // one more user in through gateway 1 so the janitor's removal stays large.
    let (u7, _) = Client::join_ephemeral(&url1("u7")).await;
    let seen = until(&mut obs, |v| is_count(v, 7)).await;
    assert!(per_user(&seen).is_empty(), "{:?}", per_user(&seen));
    gw2.proc.kill9();
    let seen = until(&mut obs, |v| is_count(v, 4)).await;
    assert!(per_user(&seen).is_empty(), "{:?}", per_user(&seen));

    // Back at the threshold: per-user leave again.
    drop(u7);
    let seen = until(&mut obs, |v| v["type"] == "leave").await;
    assert_eq!(seen.last().unwrap().v["data"]["username"], "u7");
    assert!(counts(&seen).is_empty());
}

/// Waits until gateway `gw` reports `n` distinct users in room `big`.
async fn wait_users(gw: &Gateway, n: u64) {
    let addr = gw.addr();
    eventually(&format!("{n} users in big"), DEADLINE, || {
        let addr = addr.clone();
        async move {
            let (status, body) = http_get(&addr, "/rooms/big/presence").await.ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["count"] == n).then_some(())
        }
    })
    .await;
}
