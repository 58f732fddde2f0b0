//! The JavaScript client (`clients/js`): its unit tests (node's built-in test
//! runner against a fake socket), and the client in Node against two real
//! gateways (`tests/js/node-client.mjs`). Both run in `cargo test`, so
//! `scripts/test` covers them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

#[test]
fn the_js_client_unit_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let out = std::process::Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&dir)
        .output()
        .expect("node is installed (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}

#[tokio::test]
async fn the_js_client_in_node_chats_edits_and_recovers_across_gateways() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw1 = start_gateway(&redis.url(), "gw1", &[]).await;
    let gw2 = start_gateway(&redis.url(), "gw2", &[]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("js/node-client.mjs");
    let mut node = tokio::process::Command::new("node");
    // Node 22+ has a global WebSocket; Node 20 (Debian 12) only behind a flag.
    if node_major() < 22 {
        node.arg("--experimental-websocket");
    }
    node.arg(script)
        .arg(format!("ws://{}/ws", gw1.addr()))
        .arg(format!("ws://{}/ws", gw2.addr()))
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), node.output())
        .await
        .expect("the node client finished in time")
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("OK "))
        .expect("an OK line");
    let result: serde_json::Value = serde_json::from_str(line).unwrap();
    let expected = serde_json::json!([
        "one (edited)",
        "two",
        "three",
        "four",
        "from bo, queued while offline"
    ]);
    assert_eq!(result["ana"], expected);
    assert_eq!(
        result["bo"], expected,
        "each message once, in order, after the drop"
    );
    let seqs: Vec<u64> = serde_json::from_value(result["seqs"].clone()).unwrap();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
}

fn node_major() -> u32 {
    let out = std::process::Command::new("node")
        .arg("--version")
        .output()
        .expect("node is installed");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}
