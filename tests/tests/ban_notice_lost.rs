//! Issue 23 path 8: a ban reaches every connection of the banned user
//! within 10 s even when its pub/sub notice is lost.
//!
//! The gateway holding the banned user's socket talks to Redis through the
//! fault proxy. Its delivery subscription is dropped and its re-subscription
//! held, and the ban is placed (through another gateway) right then: the
//! notice is published to a channel nobody listens on, and is gone. The
//! banned user's socket must still close with 4003 within 10 s, while the
//! other members of the room and the same user's socket in another room
//! stay.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_tests::fault_proxy::FaultProxy;
use chat_tests::http_request;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "lost-ban-secret-lost-ban-secret-lost";
const API_KEY: &str = "ban-key";

/// The contract's bound.
const BAN_BOUND: Duration = Duration::from_secs(10);

fn env() -> Vec<(&'static str, &'static str)> {
    [FAST_GW, &[("JWT_SECRET", SECRET), ("API_KEYS", API_KEY)]].concat()
}

/// The gateway behind the proxy waits for its held re-subscription instead
/// of timing out and subscribing again on a fresh connection, so the notice
/// surely falls into the gap.
fn held_env() -> Vec<(&'static str, &'static str)> {
    [env().as_slice(), &[("REDIS_TIMEOUT_MS", "10000")]].concat()
}

/// Sends `frame` and waits for its ack.
async fn acked(c: &mut Client, frame: Value) {
    c.send_text(&frame.to_string()).await;
    let ack = c.next_of_type("ack").await;
    assert_eq!(ack["data"]["client_id"], frame["data"]["client_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_whose_notice_is_lost_still_closes_the_users_connection_within_10_s() {
    let redis = Redis::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let _w = start_worker(&redis.url(), "w1", &[("STREAM_SHARDS", "4")]).await;
    let behind_proxy =
        start_gateway(&format!("redis://{}", proxy.addr()), "gwp", &held_env()).await;
    let direct = start_gateway(&redis.url(), "gwd", &env()).await;
    let room = "banroom";
    let url = |sub: &str, room: &str| {
        behind_proxy.ws_url(&format!(
            "room={room}&token={}",
            user_token(SECRET, sub, None)
        ))
    };
    let (mut troll, _) = Client::join(&url("troll", room)).await;
    let (mut elsewhere, _) = Client::join(&url("troll", "otherroom")).await;
    let (mut bystander, _) = Client::join(&url("nice", room)).await;
    acked(&mut troll, message_frame(room, "before", "t0")).await;

    // Cut the delivery subscription and hold its re-subscription: what is
    // published to the gateway's channel meanwhile reaches no one.
    let mut held = proxy.stall_next(b"SUBSCRIBE", Duration::from_secs(4));
    assert_eq!(proxy.drop_subscribers(), 1, "one delivery subscription");
    eventually("the gateway's subscription is down", DEADLINE, || async {
        let (status, _) = chat_tests::http_get(&behind_proxy.addr(), "/readyz")
            .await
            .ok()?;
        (status == 503).then_some(())
    })
    .await;
    let ban = json!({"user": "troll", "seconds": 600}).to_string();
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = http_request(
        &direct.addr(),
        "POST",
        &format!("/rooms/{room}/bans"),
        &[("Authorization", auth.as_str())],
        &ban,
    )
    .await
    .unwrap();
    let banned_at = Instant::now();
    assert_eq!(status, 201, "{body}");
    assert!(
        !held.has_fired(),
        "the ban was placed while the re-subscription was still held"
    );

    let closed = troll.wait_closed(BAN_BOUND + Duration::from_secs(5)).await;
    let took = banned_at.elapsed();
    assert_eq!(
        closed.as_ref().map(|(c, r)| (*c, r.as_str())),
        Some((4003, "banned")),
        "the banned socket closes with 4003 (after {took:?})"
    );
    assert!(
        took <= BAN_BOUND,
        "closed after {took:?}, bound {BAN_BOUND:?}"
    );
    held.wait(DEADLINE).await;

    // The others stay: the bystander chats and hears, the user's socket in
    // another room is not banned.
    acked(&mut bystander, message_frame(room, "still here", "n1")).await;
    acked(
        &mut elsewhere,
        message_frame("otherroom", "other room", "e1"),
    )
    .await;
    while bystander.next_of_type("message").await["data"]["message"] != "still here" {}
}
