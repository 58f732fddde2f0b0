//! CPU time of the service's processes over a scenario, from
//! `/proc/<pid>/stat` (user + system), so the report can say what a message
//! and a delivery cost each tier: gateways, workers and Redis.

use std::time::Instant;

/// A named group of processes to measure, e.g. `gateway=101,102`.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) pids: Vec<u32>,
}

/// Parses `name=pid[,pid…]` (a `--cpu` argument).
pub(crate) fn parse_group(s: &str) -> Result<Group, String> {
    let (name, pids) = s
        .split_once('=')
        .ok_or_else(|| format!("expected name=pid[,pid…], got {s}"))?;
    let pids = pids
        .split(',')
        .map(|p| p.trim().parse::<u32>().map_err(|e| format!("pid {p}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Group {
        name: name.to_owned(),
        pids,
    })
}

/// User + system CPU seconds a process has used (0 once it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at `state`.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `)`.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports these in USER_HZ, which is 100 on every architecture.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every group at one moment.
#[derive(Debug)]
pub(crate) struct Snapshot {
    at: Instant,
    seconds: Vec<f64>,
}

/// Takes a snapshot of `groups`.
pub(crate) fn snapshot(groups: &[Group]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        seconds: groups
            .iter()
            .map(|g| g.pids.iter().map(|&p| cpu_seconds(p)).sum())
            .collect(),
    }
}

/// Adds, per group, the CPU used since `before`: `cpu_<name>_pct` (of one
/// core), `cpu_<name>_us_per_msg` and, given deliveries,
/// `cpu_<name>_us_per_delivery`.
pub(crate) fn report(
    groups: &[Group],
    before: &Snapshot,
    messages: u64,
    deliveries: u64,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) {
    let after = snapshot(groups);
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    for ((g, b), a) in groups.iter().zip(&before.seconds).zip(&after.seconds) {
        let used = (a - b).max(0.0);
        let n = &g.name;
        extra.insert(
            format!("cpu_{n}_pct"),
            format!("{:.1}", 100.0 * used / wall).into(),
        );
        if messages > 0 {
            extra.insert(
                format!("cpu_{n}_us_per_msg"),
                format!("{:.1}", used * 1e6 / messages as f64).into(),
            );
        }
        if deliveries > 0 {
            extra.insert(
                format!("cpu_{n}_us_per_delivery"),
                format!("{:.2}", used * 1e6 / deliveries as f64).into(),
            );
        }
    }
}
