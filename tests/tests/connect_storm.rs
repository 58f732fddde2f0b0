//! A connect storm while Redis falls behind: every connection either is
//! refused early with a retry hint (HTTP 503 `overloaded` with
//! `Retry-After` before the upgrade, or close 1013 `overloaded: retry after
//! N s` when its registration could not be taken in time), or is
//! registered and stays open. None is accepted and then dropped with 1011
//! `unavailable`, which is what fed the reconnect storms of issue 26: the
//! clients of a gateway that fell behind were served, dropped, and came
//! straight back.
//!
//! Redis falling behind is made real with the fault proxy between the
//! gateway and Redis: the first registration pipeline is held for longer
//! than `REDIS_TIMEOUT_MS` (and what follows it on that Redis connection
//! waits behind it), while a storm of clients connects at once and retries
//! after every refusal until it is in.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chat_tests::fault_proxy::FaultProxy;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};

const CLIENTS: usize = 60;
const GATEWAY: &str = "storm-gw";

/// What one connection attempt ended with.
enum Attempt {
    /// 503 `overloaded` before the upgrade, with this `Retry-After`.
    Refused(String),
    /// Closed after the upgrade with this code and reason.
    Closed(u16, String),
    /// Registered: its `session` frame arrived.
    Registered(Box<Ws>),
}

/// One attempt: the upgrade, then frames until the `session` frame (sent
/// once the connection is registered and its join history sent) or a close.
async fn attempt(url: &str) -> Attempt {
    let (mut ws, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(resp)) => {
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(resp.status().as_u16(), 503, "{body}");
            assert_eq!(body["error"]["code"], "overloaded", "{body}");
            let retry_after = resp
                .headers()
                .get("retry-after")
                .expect("a 503 overloaded carries Retry-After")
                .to_str()
                .unwrap()
                .to_owned();
            return Attempt::Refused(retry_after);
        }
        Err(e) => panic!("unexpected handshake failure: {e}"),
    };
    loop {
        let next = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame or a close within the deadline");
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "session" {
                    return Attempt::Registered(Box::new(ws));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Attempt::Closed(code, reason);
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

/// What one client saw until it was registered.
#[derive(Default, Debug)]
struct Seen {
    refused: usize,
    closed_overloaded: usize,
}

/// Connects until registered, retrying after each refusal (briefly: the
/// test does not wait out the hint); asserts every refusal is one of the two
/// early, hinted kinds.
async fn connect_until_registered(url: String) -> (Ws, Seen) {
    let mut seen = Seen::default();
    for _ in 0..400 {
        match attempt(&url).await {
            Attempt::Registered(ws) => return (*ws, seen),
            Attempt::Refused(retry_after) => {
                assert_eq!(retry_after, "1");
                seen.refused += 1;
            }
            Attempt::Closed(code, reason) => {
                assert_eq!(
                    (code, reason.as_str()),
                    (1013, "overloaded: retry after 1 s"),
                    "an upgraded connection was dropped otherwise than with the overload hint"
                );
                seen.closed_overloaded += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20 + rand::random::<u64>() % 80)).await;
    }
    panic!("never registered: {seen:?}");
}

#[tokio::test]
async fn a_storm_while_redis_lags_is_refused_early_or_served_never_dropped() {
    let redis = Redis::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let gw = start_gateway(
        &format!("redis://{}", proxy.addr()),
        GATEWAY,
        &[
            ("REDIS_TIMEOUT_MS", "1000"),
            ("MAX_PENDING_REGISTRATIONS", "8"),
            ("OVERLOAD_RETRY_AFTER_SECS", "1"),
        ],
    )
    .await;
    // The first registration (its members are `<gateway>/<conn>`) is held
    // past the Redis timeout, and the Redis connection it went on with it.
    let mut stalled = proxy.stall_next(format!("{GATEWAY}/").as_bytes(), Duration::from_secs(3));

    let url = gw.ws_url("room=storm");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(connect_until_registered(url.clone())))
        .collect();
    let mut open = Vec::new();
    let (mut refused, mut closed_overloaded) = (0, 0);
    for c in clients {
        let (ws, seen) = c.await.unwrap();
        refused += seen.refused;
        closed_overloaded += seen.closed_overloaded;
        open.push(ws);
    }
    stalled.wait(DEADLINE).await;
    assert!(
        refused > 0,
        "the storm exceeded MAX_PENDING_REGISTRATIONS: some were refused before the upgrade"
    );
    assert!(
        closed_overloaded > 0,
        "the stalled registrations were closed with the hint"
    );

    // Every registered connection stays open and is served: it answers a
    // presence request, and the gateway holds all of them.
    for ws in &mut open {
        ws.send(Message::text(r#"{"type":"presence"}"#))
            .await
            .unwrap();
        loop {
            let next = tokio::time::timeout(DEADLINE, ws.next())
                .await
                .expect("an answer within the deadline");
            match next {
                Some(Ok(Message::Text(t))) if t.contains(r#""type":"presence""#) => break,
                Some(Ok(Message::Close(f))) => panic!("a registered connection was closed: {f:?}"),
                Some(Ok(_)) => {}
                other => panic!("a registered connection ended: {other:?}"),
            }
        }
    }
    let addr = gw.addr();
    let gauge = r#"chat_gateway_connections{transport="ws"}"#;
    eventually("the gateway holds every client", DEADLINE, || async {
        (metric(&addr, gauge).await == Some(CLIENTS as f64)).then_some(())
    })
    .await;
    let dropped = r#"chat_gateway_connections_closed_total{reason="unavailable",transport="ws"}"#;
    assert_eq!(metric(&addr, dropped).await, Some(0.0));
    let early = metric(
        &addr,
        r#"chat_gateway_connections_shed_total{reason="pending_registrations"}"#,
    )
    .await
    .unwrap()
        + metric(
            &addr,
            r#"chat_gateway_connections_shed_total{reason="redis_timeouts"}"#,
        )
        .await
        .unwrap();
    assert_eq!(early, refused as f64);
    let mut late = 0.0;
    for reason in [
        "registration_timeout",
        "registration_queue",
        "history_timeout",
    ] {
        let series = format!(r#"chat_gateway_connections_shed_total{{reason="{reason}"}}"#);
        late += metric(&addr, &series).await.unwrap();
    }
    assert_eq!(late, closed_overloaded as f64);
}
