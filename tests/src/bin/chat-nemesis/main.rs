//! `chat-nemesis`: randomized fault schedules against the whole system
//! (durable Redis or a 3+3 cluster, 3 workers, 3 gateways, a webhook
//! receiver), with an independent checker of what clients saw, what the
//! webhook got and what Redis holds (DESIGN.md, "Nemesis"; issue 24).
//! `scripts/nemesis` builds and runs it.
//!
//! # Layout
//! - [`system`]: starts and heals the processes; [`webhook`]: the receiver.
//! - [`faults`]: a seed's fault plan; [`apply`]: starting and ending each.
//! - [`workload`]: publishers and subscribers that log what they saw into
//!   [`record`]'s observations.
//! - [`schedule`]: one schedule: system, workload, faults, quiet, check.
//! - [`checker`]: the rules, reading only the observations;
//!   [`selftest`]: plants anomalies to prove the checker can fail.
//!
//! Output: per schedule its seed, the faults with their times, the counts
//! and each anomaly; a count per kind; last line
//! `nemesis: S schedules, F faults, A anomalies`. Exit 0 iff A = 0 (and
//! every schedule ran; a schedule that could not start exits 2).

mod apply;
mod checker;
mod faults;
mod record;
mod schedule;
mod selftest;
mod system;
mod webhook;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::checker::{per_kind, Kind};

/// Randomized fault schedules with an independent checker.
#[derive(Debug, Parser)]
#[command(name = "chat-nemesis")]
struct Cli {
    /// Run on a Redis Cluster of 3 masters + 3 replicas (ACK_AFTER_REPLICAS=1).
    #[arg(long)]
    cluster: bool,
    /// Seed of the first schedule; schedule i uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of schedules.
    #[arg(long, default_value_t = 1)]
    schedules: u64,
    /// Seconds of workload and faults per schedule.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Plant known anomalies in a synthetic history and check each is reported.
    #[arg(long)]
    self_test: bool,
    /// Where processes keep their logs and data (default: a fresh temp dir,
    /// removed when every schedule passed).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.self_test {
        return if selftest::run() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let dir = cli.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("chat-nemesis-{}", std::process::id()))
    });
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut failed_to_run = 0;
    for i in 0..cli.schedules {
        let seed = cli.seed + i;
        let mode = if cli.cluster {
            "cluster 3+3"
        } else {
            "single Redis"
        };
        println!(
            "schedule {}/{}: seed {seed}, {mode}, {} s  (re-run: scripts/nemesis{} --seed {seed} --schedules 1 --duration {})",
            i + 1,
            cli.schedules,
            cli.duration,
            if cli.cluster { " --cluster" } else { "" },
            cli.duration
        );
        let sdir = dir.join(format!("seed-{seed}"));
        match schedule::run(seed, Duration::from_secs(cli.duration), cli.cluster, &sdir).await {
            Ok(out) => {
                for (k, n) in &out.faults {
                    *faults.entry(k).or_default() += n;
                }
                for a in &out.anomalies {
                    println!("  anomaly {a}");
                }
                println!(
                    "  seed {seed}: {} faults, {} anomalies",
                    out.faults.values().sum::<usize>(),
                    out.anomalies.len()
                );
                for (k, n) in per_kind(&out.anomalies) {
                    *kinds.entry(k).or_default() += n;
                }
            }
            Err(e) => {
                failed_to_run += 1;
                println!("  seed {seed}: could not run: {e:#}");
            }
        }
    }
    let anomalies: usize = kinds.values().sum();
    let per: Vec<String> = Kind::ALL
        .iter()
        .map(|k| format!("{}={}", k.name(), kinds.get(k).copied().unwrap_or(0)))
        .collect();
    let fault_kinds: Vec<String> = faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!("faults by kind: {}", fault_kinds.join(" "));
    println!("anomalies by kind: {}", per.join(" "));
    if failed_to_run > 0 {
        println!(
            "{failed_to_run} schedule(s) could not run; logs under {}",
            dir.display()
        );
    } else if anomalies > 0 {
        println!("logs under {}", dir.display());
    } else if cli.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "nemesis: {} schedules, {} faults, {anomalies} anomalies",
        cli.schedules,
        faults.values().sum::<usize>()
    );
    if anomalies > 0 {
        ExitCode::FAILURE
    } else if failed_to_run > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
