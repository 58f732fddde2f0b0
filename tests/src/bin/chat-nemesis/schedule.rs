//! One schedule, start to end: start the system, run the workload while the
//! faults of the seed's plan are applied, stop sending, heal everything,
//! wait (bounded) until the system is quiet, collect what was observed and
//! what Redis holds, and hand it to the checker.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::checker::{check, Anomaly};
use crate::faults::plan;
use crate::record::{Observations, SentKind, SubEvent};
use crate::system::System;
use crate::workload::{http_publisher, subscriber, ws_publisher, Ctx};

/// Rooms of the workload.
const ROOMS: usize = 4;
/// WebSocket publishers per room.
const PUBLISHERS_PER_ROOM: usize = 2;
/// The longest wait for the system to become quiet after the faults.
const QUIET: Duration = Duration::from_secs(30);

/// What one schedule found.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Faults applied, per kind.
    pub(crate) faults: BTreeMap<&'static str, usize>,
    /// Anomalies the checker reported.
    pub(crate) anomalies: Vec<Anomaly>,
}

/// Runs the schedule of `seed` for `duration`, with files under `dir`.
///
/// # Errors
/// When the system cannot be started or Redis cannot be read at the end.
pub(crate) async fn run(
    seed: u64,
    duration: Duration,
    cluster: bool,
    dir: &Path,
) -> anyhow::Result<Outcome> {
    let mut sys = System::start(dir, cluster).await?;
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("nem{seed}-r{r}")).collect();
    let gw_ports: Vec<u16> = sys.gateways.iter().map(|g| g.spec.port).collect();
    let (stop_sending_tx, stop_sending) = watch::channel(false);
    let (stop_all_tx, stop_all) = watch::channel(false);
    let ctx = Ctx {
        gw_ports: gw_ports.clone(),
        stop_sending,
        stop_all,
    };

    let mut subs = Vec::new();
    let mut progress = Vec::new();
    for room in &rooms {
        for g in 0..gw_ports.len() {
            let p = Arc::new(AtomicU64::new(0));
            progress.push((room.clone(), p.clone()));
            let name = format!("s-{room}-gw{g}");
            subs.push(tokio::spawn(subscriber(
                name,
                room.clone(),
                g,
                ctx.clone(),
                p,
            )));
        }
    }
    // Subscribers join before anything is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut pubs = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for k in 0..PUBLISHERS_PER_ROOM {
            let name = format!("p{}", r * PUBLISHERS_PER_ROOM + k);
            let home = (r + k) % gw_ports.len();
            pubs.push(tokio::spawn(ws_publisher(
                name,
                room.clone(),
                home,
                ctx.clone(),
            )));
        }
    }
    pubs.push(tokio::spawn(http_publisher(rooms.clone(), ctx.clone())));

    let schedule = plan(seed, duration, cluster);
    let start = tokio::time::Instant::now();
    crate::apply::run(&mut sys, &schedule, start).await;
    let mut kinds = BTreeMap::new();
    for p in &schedule {
        *kinds.entry(p.fault.kind()).or_default() += 1;
    }
    tokio::time::sleep_until(start + duration).await;
    let _ = stop_sending_tx.send(true);
    sys.heal().await;

    let mut obs = Observations {
        rooms: rooms.clone(),
        ..Observations::default()
    };
    // Publishers finish their current item (resending through the healed system).
    let pub_deadline = tokio::time::Instant::now() + QUIET;
    for h in pubs {
        let rest = pub_deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(rest, h).await {
            Ok(Ok(log)) => obs.publishers.push(log),
            _ => {
                let _ = stop_all_tx.send(true);
            }
        }
    }

    let quiet = wait_quiet(&sys, &obs, &rooms, &progress).await;
    let ready = gateways_ready(&sys).await;
    let _ = stop_all_tx.send(true);
    for h in subs {
        if let Ok(mut log) = h.await {
            let gw = log.events.iter().rev().find_map(|e| match e {
                SubEvent::Connect { gateway, .. } => Some(*gateway),
                _ => None,
            });
            log.gateway_ready_at_end = gw.is_some_and(|g| ready[g]);
            obs.subscribers.push(log);
        }
    }
    obs.webhook_events = sys.webhook.events();
    for room in &rooms {
        obs.stored.insert(room.clone(), sys.stored(room).await?);
    }
    print_counts(&obs, quiet, duration);
    let anomalies = check(&obs);
    drop(sys);
    Ok(Outcome {
        faults: kinds,
        anomalies,
    })
}

/// Waits until every acked item is stored, every subscriber has the last
/// stored `seq` of its room and the webhook got it too, at most [`QUIET`];
/// how long it took, `None` if it never became quiet.
async fn wait_quiet(
    sys: &System,
    obs: &Observations,
    rooms: &[String],
    progress: &[(String, Arc<AtomicU64>)],
) -> Option<Duration> {
    let started = Instant::now();
    let acked: HashSet<&str> = obs
        .publishers
        .iter()
        .flat_map(|p| p.sent.iter().filter_map(|s| s.acked_id.as_deref()))
        .collect();
    while started.elapsed() < QUIET {
        let mut ok = true;
        let mut stored_keys = HashSet::new();
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for room in rooms {
            let Ok(recs) = sys.stored(room).await else {
                ok = false;
                break;
            };
            for r in &recs {
                let k = if r.get("type").is_some() {
                    &r["event_id"]
                } else {
                    &r["id"]
                };
                if let Some(k) = k.as_str() {
                    stored_keys.insert(k.to_owned());
                }
            }
            let top = recs
                .iter()
                .filter_map(|r| r["seq"].as_u64())
                .max()
                .unwrap_or(0);
            last.insert(room, top);
            ok &= sys.webhook.max_seq(room) >= top;
        }
        ok &= acked.iter().all(|id| stored_keys.contains(*id));
        ok &= progress.iter().all(|(room, p)| {
            p.load(Ordering::Relaxed) >= last.get(room.as_str()).copied().unwrap_or(0)
        });
        if ok {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

async fn gateways_ready(sys: &System) -> Vec<bool> {
    let mut out = Vec::new();
    for i in 0..sys.gateways.len() {
        let r = chat_tests::http_get(&sys.gw_addr(i), "/readyz").await;
        out.push(r.is_ok_and(|(s, _)| s == 200));
    }
    out
}

fn print_counts(obs: &Observations, quiet: Option<Duration>, duration: Duration) {
    let sent = obs.publishers.iter().flat_map(|p| &p.sent);
    let (mut msgs, mut events, mut acked, mut resent) = (0, 0, 0, 0);
    for s in sent {
        match s.kind {
            SentKind::Message => msgs += 1,
            SentKind::Event => events += 1,
        }
        acked += usize::from(s.acked_id.is_some());
        resent += usize::from(s.attempts > 1);
    }
    let stored: usize = obs.stored.values().map(Vec::len).sum();
    let (mut deliveries, mut conns, mut closes) = (0, 0, 0);
    for e in obs.subscribers.iter().flat_map(|s| &s.events) {
        match e {
            SubEvent::Frame(v) if v["type"] != "history" => deliveries += 1,
            SubEvent::Connect { .. } => conns += 1,
            SubEvent::Closed(..) | SubEvent::Dropped(_) => closes += 1,
            SubEvent::Frame(_) => {}
        }
    }
    println!(
        "  counts: {msgs} messages and {events} events sent, {acked} acked, {resent} resent; \
         {stored} stored; {deliveries} live deliveries over {conns} subscriber connections \
         ({closes} closed or dropped); {} webhook events; {:.1} acked/s under faults",
        obs.webhook_events.len(),
        acked as f64 / duration.as_secs_f64()
    );
    match quiet {
        Some(d) => println!("  quiet {:.1}s after the faults healed", d.as_secs_f64()),
        None => println!(
            "  not quiet within {}s after the faults healed",
            QUIET.as_secs()
        ),
    }
}
