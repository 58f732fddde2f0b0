//! The nemesis in the test suite, kept short for CI: its checker must
//! report every planted anomaly (`--self-test`), and short schedules with
//! fixed seeds (two of 45 s on a single durable Redis, one on a 3+3
//! cluster) must inject faults and end with 0 anomalies. Long runs are
//! `scripts/nemesis --schedules 10 --duration 120` (docs/architecture.md,
//! "Nemesis"); each seed a long run ever finds an anomaly with joins
//! [`SINGLE_SEEDS`] or [`CLUSTER_SEEDS`] once the cause is fixed.
//!
//! No timed assertion: a schedule's faults are bounded, and its end waits
//! (bounded) for the system to be quiet; the verdict is the checker's.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Seeds of the short schedules on a single durable Redis. 1003: the long
/// run's seq gap (Redis's own AOF repair after a crash cut a transaction;
/// its forcing test is `redis_aof.rs`, as the moment, +80 s, lies beyond a
/// short schedule).
const SINGLE_SEEDS: [u64; 2] = [2, 1003];
/// Seeds of the short schedules on a cluster. 1: a master paused past its
/// failover left one room's webhook sender stopped while its shard ran on
/// (forcing test: `webhooks.rs`, `a_sender_that_stops_by_itself_…`).
const CLUSTER_SEEDS: [u64; 1] = [1];
/// Seconds per short schedule.
const SHORT: &str = "45";

/// Schedules run one at a time: each starts 7 to 10 processes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The `chat-nemesis` binary cargo built for this test (and, through the
/// harness, the gateway and worker binaries next to it).
fn nemesis() -> PathBuf {
    common::bin_path("chat-gateway");
    common::bin_path("chat-fanout-worker");
    PathBuf::from(env!("CARGO_BIN_EXE_chat-nemesis"))
}

/// Runs `chat-nemesis` with `args`; its stdout, and panics unless it exits 0.
fn run(args: &[&str]) -> String {
    let out = Command::new(nemesis())
        .args(args)
        .output()
        .expect("chat-nemesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chat-nemesis {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs one schedule of `seed` and checks its last line: faults were
/// injected and no anomaly was found.
fn schedule(cluster: bool, seed: u64) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let seed = seed.to_string();
    let mut args = vec!["--seed", &seed, "--schedules", "1", "--duration", SHORT];
    if cluster {
        args.insert(0, "--cluster");
    }
    let out = run(&args);
    let last = out.lines().last().unwrap_or_default();
    let faults: u64 = last
        .strip_prefix("nemesis: 1 schedules, ")
        .and_then(|r| r.strip_suffix(" faults, 0 anomalies"))
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("no clean summary line:\n{out}"));
    assert!(faults > 0, "the schedule injected no fault:\n{out}");
}

#[test]
fn the_checker_reports_every_planted_anomaly() {
    let out = run(&["--self-test"]);
    let last = out.lines().last().unwrap_or_default();
    let (planted, reported) = last
        .strip_prefix("self-test: ")
        .and_then(|r| r.split_once(" planted, "))
        .expect("a self-test summary line");
    assert_eq!(format!("{planted} reported"), reported, "{out}");
}

#[test]
fn short_schedules_on_one_durable_redis_find_no_anomaly() {
    for seed in SINGLE_SEEDS {
        schedule(false, seed);
    }
}

#[test]
fn a_short_schedule_on_a_cluster_finds_no_anomaly() {
    for seed in CLUSTER_SEEDS {
        schedule(true, seed);
    }
}
