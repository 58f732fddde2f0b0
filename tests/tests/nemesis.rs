//! The nemesis in the test suite, kept short for CI: its checker must
//! report every planted anomaly (`--self-test`), and one 15 s schedule on a
//! single durable Redis (seed 1) must end with 0 anomalies. Long runs are
//! `scripts/nemesis --schedules 20 --duration 120` (docs/architecture.md,
//! "Nemesis").

mod common;

use std::path::PathBuf;
use std::process::Command;

/// The `chat-nemesis` binary cargo built for this test (and, through the
/// harness, the gateway and worker binaries next to it).
fn nemesis() -> PathBuf {
    common::bin_path("chat-gateway");
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
fn a_short_schedule_on_one_redis_finds_no_anomaly() {
    let out = run(&["--seed", "1", "--schedules", "1", "--duration", "15"]);
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("nemesis: 1 schedules, ") && last.ends_with(", 0 anomalies"),
        "{out}"
    );
}
