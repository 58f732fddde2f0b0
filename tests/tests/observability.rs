//! Metrics, help output and documentation: traffic is driven through real
//! processes, both `/metrics` endpoints are scraped and parsed, and every
//! option and metric the code defines must be documented where operators look.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

/// Values of the series, waiting until each one reaches what is expected.
async fn expect_series(addr: &str, expected: &[(&str, f64)]) {
    for (series, want) in expected {
        let got = eventually(
            &format!("{series} == {want} at {addr}"),
            DEADLINE,
            || async move { metric(addr, series).await.filter(|v| v == want) },
        )
        .await;
        assert_eq!(got, *want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_on_both_tiers() {
    let redis = Redis::start().await;
    let worker = start_worker(&redis.url(), "w1", &[]).await;
    let gw = start_gateway(
        &redis.url(),
        "gw1",
        &[("RATE_LIMIT_PER_SEC", "0.001"), ("RATE_LIMIT_BURST", "7")],
    )
    .await;
    let (mut a, _) = Client::join(&gw.ws_url("room=metered")).await;
    for i in 0..5 {
        a.say("metered", "hello", &format!("c{i}")).await;
    }
    a.messages(5).await;
    a.send_text("not json").await;
    assert_eq!(a.next_of_type("error").await["data"]["code"], "bad_json");
    a.say("metered", "one more", "c5").await;
    a.say("metered", "too many", "c6").await;
    assert_eq!(
        a.next_of_type("error").await["data"]["code"],
        "rate_limited"
    );

    let g = gw.addr();
    expect_series(
        &g,
        &[
            ("chat_gateway_connections{transport=\"ws\"}", 1.0),
            (
                "chat_gateway_connections_opened_total{transport=\"ws\"}",
                1.0,
            ),
            ("chat_gateway_connections{transport=\"sse\"}", 0.0),
            (
                "chat_gateway_frames_received_total{result=\"accepted\"}",
                6.0,
            ),
            (
                "chat_gateway_frames_received_total{result=\"bad_json\"}",
                1.0,
            ),
            (
                "chat_gateway_frames_received_total{result=\"rate_limited\"}",
                1.0,
            ),
            ("chat_gateway_rate_limited_frames_total", 1.0),
            ("chat_gateway_messages_delivered_total", 6.0),
            // Six messages stored, in however many round trips the
            // connection's pipelined appends took.
            ("chat_gateway_append_batch_messages_sum", 6.0),
            ("chat_gateway_delivery_latency_seconds_count", 6.0),
            ("chat_gateway_rooms", 1.0),
            ("chat_gateway_subscriptions_total", 1.0),
        ],
    )
    .await;
    let w = worker.addr();
    expect_series(
        &w,
        &[
            ("chat_worker_messages_persisted_total", 6.0),
            ("chat_worker_publish_latency_seconds_count", 6.0),
            ("chat_worker_shards_owned", 16.0),
            ("chat_worker_stream_lag_entries", 0.0),
            ("chat_worker_stream_pending_entries", 0.0),
        ],
    )
    .await;

    // Histograms are real histograms with buckets, and process metrics exist.
    for addr in [&g, &w] {
        let (status, body) = http_get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        let samples = parse_exposition(&body);
        assert!(
            samples
                .get("process_resident_memory_bytes")
                .is_some_and(|v| *v > 0.0),
            "{addr}: RSS"
        );
        assert!(
            samples.contains_key("process_cpu_seconds_total"),
            "{addr}: CPU"
        );
        assert!(samples.contains_key("process_open_fds"), "{addr}: fds");
        for line in body.lines().filter(|l| l.starts_with("# TYPE chat_")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                !name.contains("room")
                    || name == "chat_gateway_rooms"
                    || name == "chat_gateway_room_creations_refused_total",
                "no room-named series: {name}"
            );
        }
        // Every series is described.
        for line in body.lines().filter(|l| l.starts_with("# TYPE chat_")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                body.contains(&format!("# HELP {name} ")),
                "{addr}: {name} has no HELP"
            );
        }
        // Label values are never room names.
        assert!(
            !body.contains("metered"),
            "{addr}: a room id leaked into a label"
        );
    }
    let (_, body) = http_get(&g, "/metrics").await.unwrap();
    assert!(body.contains("# TYPE chat_gateway_stream_append_seconds histogram"));
    assert!(body.contains("chat_gateway_stream_append_seconds_bucket{le=\"0.005\"}"));
    let batches = metric(&w, "chat_worker_batch_size_messages_count")
        .await
        .unwrap();
    assert!((1.0..=6.0).contains(&batches), "batches: {batches}");
}

/// Every `env = "…"` in the configuration sources.
fn env_vars() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = BTreeSet::new();
    for file in [
        "gateway/src/config.rs",
        "gateway/src/hook/config.rs",
        "fanout-worker/src/config.rs",
        "shared/src/config.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for part in text.split("env = \"").skip(1) {
            out.insert(part.split('"').next().unwrap().to_owned());
        }
    }
    out.insert("RUST_LOG".into());
    out
}

fn read_tree(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            read_tree(&p, out);
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            out.push_str(&text);
        }
    }
}

#[test]
fn every_option_and_metric_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The configuration reference (generated from the clap definitions, see
    // tests/docs.rs) and the operations guide hold what operators look up.
    let configuration = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let operations = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let mut deploy = String::new();
    read_tree(&root.join("deploy"), &mut deploy);
    let vars = env_vars();
    assert!(vars.len() > 20, "parsed the config sources: {vars:?}");
    for var in &vars {
        assert!(
            configuration.contains(&format!("`{var}`")),
            "docs/configuration.md does not document {var}"
        );
        assert!(
            deploy.contains(var),
            "deploy/ neither sets nor documents {var}"
        );
    }
    let metrics_src = std::fs::read_to_string(root.join("shared/src/metrics.rs")).unwrap();
    let names: Vec<&str> = metrics_src
        .lines()
        .filter(|l| l.starts_with("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert!(names.len() > 15);
    for name in names {
        assert!(
            operations.contains(name),
            "docs/operations.md does not document metric {name}"
        );
    }
}

#[test]
fn help_lists_every_option_with_its_env_name() {
    for (bin, file) in [
        ("chat-gateway", "gateway/src/config.rs"),
        ("chat-fanout-worker", "fanout-worker/src/config.rs"),
    ] {
        let out = std::process::Command::new(bin_path(bin))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let src = std::fs::read_to_string(root.join(file)).unwrap()
            + &std::fs::read_to_string(root.join("shared/src/config.rs")).unwrap();
        for var in src
            .split("env = \"")
            .skip(1)
            .map(|p| p.split('"').next().unwrap())
        {
            assert!(
                help.contains(&format!("[env: {var}")),
                "{bin} --help lacks {var}"
            );
        }
    }
}

#[test]
fn bad_configuration_exits_with_ex_usage() {
    for (bin, args) in [
        ("chat-gateway", vec!["--port", "not-a-port"]),
        ("chat-gateway", vec!["--gateway-id", "has/slash"]),
        ("chat-fanout-worker", vec!["--stream-shards", "0"]),
        ("chat-fanout-worker", vec!["--redis-url", "redis://[bad"]),
    ] {
        let out = std::process::Command::new(bin_path(bin))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(64),
            "{bin} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

/// A fresh gateway and worker export their incident series at 0 before any
/// incident, so dashboards show 0 and `rate()` alerts have a series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_series_exist_at_zero_on_fresh_processes() {
    let redis = Redis::start().await;
    let worker = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let gw = start_gateway(&redis.url(), "g1", FAST_GW).await;
    for series in [
        "chat_gateway_redis_errors_total{op=\"append\"}",
        "chat_gateway_slow_consumer_disconnects_total",
        "chat_gateway_rate_limited_frames_total",
        "chat_gateway_connections_closed_total{reason=\"slow_consumer\",transport=\"ws\"}",
        "chat_gateway_connections_closed_total{reason=\"slow_consumer\",transport=\"sse\"}",
        "chat_gateway_http_refused_total{route=\"read\",code=\"overloaded\"}",
        "chat_gateway_accept_errors_total{kind=\"fd_limit\"}",
        "chat_gateway_connections{transport=\"ws\"}",
        "chat_gateway_connections{transport=\"sse\"}",
        "chat_gateway_connections_opened_total{transport=\"sse\"}",
        "chat_gateway_connections_rejected_total{code=\"unauthorized\",transport=\"sse\"}",
    ] {
        assert_eq!(metric(&gw.addr(), series).await, Some(0.0), "{series}");
    }
    for series in [
        "chat_worker_redis_errors_total{op=\"lease\"}",
        "chat_worker_messages_duplicate_total",
        "chat_worker_webhook_events_dropped_total{reason=\"queue_full\"}",
    ] {
        assert_eq!(metric(&worker.addr(), series).await, Some(0.0), "{series}");
    }
}
