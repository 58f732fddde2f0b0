//! The demo page served by the gateway at `/`, driven in headless Chromium
//! (`tests/browser/demo-chat.mjs`, playwright-core) against two real gateways:
//! cross-gateway order, edit/delete/react, a network cut with messages sent
//! meanwhile, and a SIGTERM drain that moves the page to the other gateway.
//! A fresh load logs no console error. Also `DEMO_PAGE` on and off. Screenshots go to `target/demo-screenshots/`.

mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn the_demo_page_and_client_are_served_unless_turned_off() {
    let redis = Redis::start().await;
    let on = start_gateway(&redis.url(), "demo-on", &[]).await;
    let off = start_gateway(&redis.url(), "demo-off", &[("DEMO_PAGE", "false")]).await;
    let (status, body) = http_get(&on.addr(), "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<title>Chat demo</title>"), "{body}");
    for path in [
        "/demo/app.js",
        "/demo/style.css",
        "/client/store.js",
        "/client/backoff.js",
    ] {
        assert_eq!(http_get(&on.addr(), path).await.unwrap().0, 200, "{path}");
    }
    let (status, client) = http_get(&on.addr(), "/client/index.js").await.unwrap();
    assert_eq!(status, 200);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js/index.js");
    assert_eq!(
        client,
        std::fs::read_to_string(source).unwrap(),
        "the embedded client is clients/js"
    );
    for path in ["/", "/client/index.js", "/demo/app.js"] {
        let (status, body) = http_get(&off.addr(), path).await.unwrap();
        assert_eq!(status, 404, "{path} with DEMO_PAGE=false");
        assert!(body.contains("not_found"), "{body}");
    }
    assert_eq!(http_get(&off.addr(), "/readyz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_pages_chat_recover_and_survive_a_drain() {
    let dir = browser_dir();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/demo-screenshots");
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    // The pages fail over between the two gateways: each lets its page
    // connect to the other (any port of this host).
    let env = [("DEMO_GATEWAYS", "ws://127.0.0.1:*")];
    let gw1 = start_gateway(&redis.url(), "gw1", &env).await;
    let gw2 = start_gateway(&redis.url(), "gw2", &env).await;
    let (mut node, mut lines) = node_script(
        &dir.join("demo-chat.mjs"),
        &[
            OsString::from(format!("http://{}", gw1.addr())),
            OsString::from(format!("http://{}", gw2.addr())),
            shots.clone().into_os_string(),
        ],
    );
    let mut phase = async |name: &str| -> Value {
        let prefix = format!("PHASE {name} ");
        next_phase(&mut lines, &prefix, Duration::from_secs(120)).await
    };

    let open = phase("open").await;
    assert_eq!(
        open["title"].as_str().unwrap().split(" — ").nth(1),
        Some("Chat demo")
    );
    // A fresh load logs nothing in the console (no favicon 404, nothing).
    assert_eq!(
        open["loadErrors"],
        serde_json::json!([]),
        "console errors or failed requests while the pages loaded"
    );

    // Both pages, on two gateways, show the same ten messages in one order.
    let order = phase("order").await;
    assert_eq!(order["a"], order["b"], "both pages show one order");
    assert_consecutive(&order["a"]);
    assert_once_each(
        &order["a"],
        &["a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3", "b4", "b5"],
    );

    let presence = phase("presence").await;
    assert_eq!(presence["typing"], "ana is typing…");
    let people = presence["people"].as_array().expect("presence shown");
    let shown = |who: &str| people.iter().any(|p| p.as_str().unwrap().starts_with(who));
    assert!(shown("ana") && shown("bo (you)"), "{people:?}");

    // An edit and a delete on page A and a reaction from page B show on both.
    let edit = phase("edit").await;
    assert_eq!(edit["a"], edit["b"]);
    let texts = texts_of(&edit["a"]);
    assert!(texts.contains(&"a1 (edited)".to_owned()), "{texts:?}");
    assert!(texts.contains(&"Message deleted".to_owned()), "{texts:?}");
    assert_eq!(
        edit["bHasEditButtonsOnA"], false,
        "only the author may edit"
    );

    // A network cut: the banner shows, and after it A has every message once, in order.
    let offline = phase("offline").await;
    assert!(offline["banner"].as_str().unwrap().contains("Reconnecting"));
    assert_eq!(
        offline["a"], offline["b"],
        "same messages, same order after recovery"
    );
    assert_consecutive_messages(&offline["a"]);
    let mut expected: Vec<&str> = vec![
        "while-away-1",
        "while-away-2",
        "while-away-3",
        "sent-offline",
    ];
    expected.extend(["a1 (edited)", "Message deleted", "b1", "b5"]);
    assert_once_each(&offline["a"], &expected);
    let states: Vec<&str> = states_of(&offline["states"]);
    assert!(states.contains(&"reconnecting"), "{states:?}");
    assert_eq!(states.last(), Some(&"open"));

    // SIGTERM to the page's gateway: 1001, then the other gateway, no loss.
    let ready = phase("drain-ready").await;
    let port = ready["port"].as_u64().unwrap() as u16;
    let drained = [&gw1, &gw2]
        .into_iter()
        .find(|g| g.port == port)
        .expect("a known gateway");
    drained.proc.sigterm();
    let drain = phase("drain").await;
    assert_ne!(
        drain["from"], drain["to"],
        "the page moved to the other gateway"
    );
    assert_eq!(drain["a"], drain["b"]);
    assert_consecutive_messages(&drain["a"]);
    assert_once_each(
        &drain["a"],
        &[
            "during-drain-1",
            "during-drain-2",
            "during-drain-3",
            "during-drain-4",
            "sent-offline",
        ],
    );
    assert!(drain["states"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["code"] == 1001));

    let errors = phase("errors").await;
    assert_eq!(
        errors["pageErrors"],
        serde_json::json!([]),
        "no uncaught errors in the pages"
    );
    assert!(node.wait().await.unwrap().success());
    for shot in [
        "demo-desktop.png",
        "demo-phone.png",
        "demo-desktop-reconnecting.png",
    ] {
        assert!(shots.join(shot).exists(), "screenshot {shot}");
    }
}

fn texts_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

fn states_of(states: &Value) -> Vec<&str> {
    states
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect()
}

/// Each of `texts` is shown exactly once, and no message id twice.
fn assert_once_each(list: &Value, texts: &[&str]) {
    let all = texts_of(list);
    for t in texts {
        assert_eq!(
            all.iter().filter(|x| x == t).count(),
            1,
            "{t} once in {all:?}"
        );
    }
    let ids: HashSet<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), all.len(), "no message shown twice");
}

/// Only messages so far: their `seq` rise by exactly 1.
fn assert_consecutive(list: &Value) {
    let seqs = seqs(list);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// Messages interleaved with events (edits, deletes, reactions take seqs too):
/// strictly rising.
fn assert_consecutive_messages(list: &Value) {
    let seqs = seqs(list);
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
}

fn seqs(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}
