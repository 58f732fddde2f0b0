//! Real browser clients: headless Chromium (driven by playwright-core from
//! `tests/browser/`) talks to two gateways over the browser's own WebSocket,
//! exchanges a message across gateways, gets a protocol error for a bad frame,
//! and sees close code 1001 when its gateway drains. `scripts/test` installs
//! Chromium and the npm package.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_chats_across_gateways_and_sees_the_drain() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` first (scripts/test does)"
    );
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw1 = start_gateway(&redis.url(), "gw1", &[]).await;
    let gw2 = start_gateway(&redis.url(), "gw2", &[]).await;
    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("ws-roundtrip.mjs"))
        .arg(gw1.ws_url("room=browser&username=chrome"))
        .arg(gw2.ws_url("room=browser&username=chromium"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut next_phase = async |prefix: &str| -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("browser answered in time")
                .unwrap()
                .unwrap_or_else(|| panic!("browser script ended before {prefix}"));
            if let Some(json) = line.strip_prefix(prefix) {
                return serde_json::from_str(json.trim()).unwrap();
            }
        }
    };
    let p1 = next_phase("PHASE1").await;
    assert_eq!(p1["history"]["data"]["room"], "browser");
    assert_eq!(p1["ack"]["data"]["client_id"], "br1");
    assert_uuid_v7(&p1["ack"]["data"]["id"]);
    let m = &p1["delivered"]["data"];
    assert_eq!(m["message"], "héllo 👋", "UTF-8 survives the round trip");
    assert_eq!(m["username"], "chrome");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["id"], p1["ack"]["data"]["id"]);
    assert_timestamp(&m["timestamp"]);
    assert_eq!(p1["error"]["data"]["code"], "bad_json");

    // The browser's gateway drains: the browser sees 1001 and can reconnect elsewhere.
    gw1.proc.sigterm();
    let p2 = next_phase("PHASE2").await;
    assert_eq!(p2["code"], 1001);
    let status = node.wait().await.unwrap();
    assert!(status.success());
    drop(gw2);
}
