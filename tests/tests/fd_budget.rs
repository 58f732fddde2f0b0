//! `MAX_CONNECTIONS` derived from `RLIMIT_NOFILE` against a real gateway
//! started with a small descriptor limit: the derived cap is logged, a full
//! budget answers HTTP 503 `too_many_connections` (never `EMFILE` in the
//! accept loop), the gateway keeps serving, and an explicit cap above the
//! budget is lowered with a warning.

mod common;

use common::*;

/// 400 descriptors with 16 pending handshakes: 400 − 50 (an eighth kept for
/// the process's own) − 16 = 334 connections.
const NOFILE: u32 = 400;
const PENDING: &str = "16";
const BUDGET: usize = 334;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_descriptor_budget_answers_503_and_the_gateway_keeps_serving() {
    let redis = Redis::start().await;
    let _worker = start_worker(&redis.url(), "w-fdb", FAST_WORKER).await;
    let env: Vec<_> = FAST_GW
        .iter()
        .copied()
        .chain([("MAX_PENDING_HANDSHAKES", PENDING)])
        .collect();
    let gw = start_gateway_with_fd_limit(&redis.url(), "gw-fdb", NOFILE, &env).await;
    let log = gw.proc.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("MAX_CONNECTIONS derived from RLIMIT_NOFILE")
                && l.contains(&format!("max_connections={BUDGET}"))
                && l.contains("nofile=400")
                && l.contains("pending=16")),
        "{log}"
    );
    let addr = gw.addr();
    let (mut a, _) = Client::join(&gw.ws_url("room=fdb&username=a")).await;

    // Fill the budget: every upgrade succeeds until the cap, then 503.
    let mut held = Vec::new();
    let refused = loop {
        match open(&gw.ws_url("room=fill"), &[]).await {
            Ok(ws) => held.push(ws),
            Err(refusal) => break refusal,
        }
        assert!(held.len() < BUDGET, "more connections than the budget");
    };
    assert_eq!(refused.0, 503, "{:?}", refused.1);
    assert_eq!(refused.1["error"]["code"], "too_many_connections");
    assert_eq!(held.len() + 1, BUDGET, "a holds one of the {BUDGET}");
    // More attempts are refused the same way, quickly, and accept never
    // ran out of descriptors.
    for _ in 0..20 {
        let (status, _) = open(&gw.ws_url("room=fill"), &[]).await.err().unwrap();
        assert_eq!(status, 503);
    }
    assert_eq!(
        metric(&addr, "chat_gateway_accept_errors_total{kind=\"fd_limit\"}").await,
        Some(0.0)
    );

    // Still serving: existing connections, health and metrics.
    a.say("fdb", "while full", "a1").await;
    assert_eq!(a.next_of_type("ack").await["data"]["client_id"], "a1");
    assert_eq!(a.messages(1).await[0]["message"], "while full");
    assert_eq!(http_get(&addr, "/livez").await.unwrap().0, 200);

    // A freed slot is taken again.
    drop(held.pop());
    let mut b = eventually("a freed slot admits again", DEADLINE, || {
        let url = gw.ws_url("room=fdb&username=b");
        async move { Client::try_join(&url).await }
    })
    .await;
    b.say("fdb", "after", "b1").await;
    assert_eq!(b.next_of_type("ack").await["data"]["client_id"], "b1");
    let mut gw = gw;
    assert!(gw.proc.is_running());
    assert!(!gw.proc.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_cap_above_the_budget_is_lowered_with_a_warning() {
    let redis = Redis::start().await;
    let gw = start_gateway_with_fd_limit(
        &redis.url(),
        "gw-fdx",
        NOFILE,
        &[
            ("MAX_PENDING_HANDSHAKES", PENDING),
            ("MAX_CONNECTIONS", "100000"),
        ],
    )
    .await;
    let log = gw.proc.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("MAX_CONNECTIONS exceeds what RLIMIT_NOFILE leaves")
            && l.contains(&format!("max_connections={BUDGET}"))
            && l.contains("asked=100000")),
        "{log}"
    );
}
