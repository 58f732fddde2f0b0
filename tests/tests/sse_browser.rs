//! The demo page in headless Chromium with WebSockets blocked
//! (`tests/browser/sse-chat.mjs`, playwright-core) against a real gateway:
//! the JS client falls back to server-sent events and HTTP by itself, and
//! chats (order, typing, edits, recovery after a dropped stream) with a page
//! on a WebSocket.

mod common;

use std::ffi::OsString;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn texts(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect()
}

fn seqs_consecutive(list: &Value) {
    let seqs: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_websockets_chats_over_sse() {
    let dir = browser_dir();
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw = start_gateway(&redis.url(), "gw1", &[]).await;
    let (mut node, mut lines) = node_script(
        &dir.join("sse-chat.mjs"),
        &[OsString::from(format!("http://{}", gw.addr()))],
    );
    let mut phase = async |name: &str| -> Value {
        let prefix = format!("PHASE {name} ");
        next_phase(&mut lines, &prefix, Duration::from_secs(120)).await
    };

    let open = phase("open").await;
    assert_eq!(open["a"]["transport"], "sse", "{open}");
    assert!(
        open["a"]["ws"]["attempts"].as_u64().unwrap() >= 2,
        "fell back after two WebSockets failed: {open}"
    );
    assert_eq!(open["a"]["ws"]["opened"], 0);
    assert_eq!(open["b"], "ws");

    let order = phase("order").await;
    assert_eq!(order["a"], order["b"], "one order on both transports");
    seqs_consecutive(&order["a"]);
    let mut shown = texts(&order["a"]);
    shown.sort_unstable();
    assert_eq!(shown, ["a1", "a2", "a3", "b1", "b2", "b3"]);

    let typing = phase("typing").await;
    assert_eq!(typing["onB"], "ana is typing…", "typing sent over HTTP");
    assert_eq!(typing["onA"], "bo is typing…", "typing received over SSE");

    let edit = phase("edit").await;
    assert_eq!(edit["a"], edit["b"]);
    assert!(texts(&edit["b"]).contains(&"a1 (edited over http)"));

    let recovered = phase("recovered").await;
    assert_eq!(
        recovered["a"], recovered["b"],
        "every message once, in order"
    );
    // The edit took seq 7 (room events share the sequence): rising, no repeats.
    let seqs: Vec<u64> = recovered["a"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    assert_eq!(seqs.len(), 9, "{seqs:?}");
    for t in ["while-away-1", "while-away-2", "while-away-3"] {
        assert_eq!(
            texts(&recovered["a"]).iter().filter(|x| **x == t).count(),
            1,
            "{t} once"
        );
    }
    assert_eq!(recovered["transport"], "sse");
    assert_eq!(
        recovered["ws"]["opened"], 0,
        "no WebSocket ever opened on A"
    );

    let errors = phase("errors").await;
    assert_eq!(errors["pageErrors"], serde_json::json!([]));
    assert!(node.wait().await.unwrap().success());
    // The closed browser's stream is noticed (at the latest by the next
    // keep-alive write, every 15 s) and the connection removed.
    let addr = gw.addr();
    eventually(
        "the SSE connection closed",
        Duration::from_secs(45),
        || async {
            let open = metric(&addr, "chat_gateway_connections{transport=\"sse\"}").await;
            (open == Some(0.0)).then_some(())
        },
    )
    .await;
}
