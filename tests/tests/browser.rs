//! Real browser clients: headless Chromium (driven by playwright-core from
//! `tests/browser/`) talks to two gateways over the browser's own WebSocket,
//! exchanges a message across gateways, gets a protocol error for a bad frame,
//! and sees close code 1001 when its gateway drains. `scripts/test` installs
//! Chromium and the npm package.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_chats_across_gateways_and_sees_the_drain() {
    let dir = browser_dir();
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", &[]).await;
    let gw1 = start_gateway(&redis.url(), "gw1", &[]).await;
    let gw2 = start_gateway(&redis.url(), "gw2", &[]).await;
    let (mut node, mut lines) = node_script(
        &dir.join("ws-roundtrip.mjs"),
        &[
            gw1.ws_url("room=browser&username=chrome"),
            gw2.ws_url("room=browser&username=chromium"),
        ],
    );
    let p1 = next_phase(&mut lines, "PHASE1", Duration::from_secs(60)).await;
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
    let p2 = next_phase(&mut lines, "PHASE2", Duration::from_secs(60)).await;
    assert_eq!(p2["code"], 1001);
    let status = node.wait().await.unwrap();
    assert!(status.success());
    drop(gw2);
}
