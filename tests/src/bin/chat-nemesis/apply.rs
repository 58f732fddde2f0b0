//! Applying a planned fault to the running system: [`begin`] at its start,
//! [`end`] at its end (the process is back, the proxy healed, the cluster
//! ok). Every wait is bounded; a step that fails is reported in the note
//! printed next to the fault, and the schedule goes on.

use std::time::Duration;

use chat_tests::fault_proxy::{FaultProxy, Trigger};

use crate::faults::{Fault, Planned, ProxyAt, Target};
use crate::system::{Service, Store, System};

/// What a started fault keeps until its end.
#[derive(Debug, Default)]
pub(crate) struct Active {
    /// A one-shot proxy rule, to tell whether it fired.
    trigger: Option<Trigger>,
}

fn service_mut(sys: &mut System, t: Target) -> &mut Service {
    match t {
        Target::Gateway(i) => &mut sys.gateways[i],
        Target::Worker(i) => &mut sys.workers[i],
    }
}

fn proxy(sys: &System, at: ProxyAt) -> Option<&FaultProxy> {
    match (at, &sys.store) {
        (ProxyAt::Process(Target::Gateway(i)), _) => sys.gateways[i].proxy.as_ref(),
        (ProxyAt::Process(Target::Worker(i)), _) => sys.workers[i].proxy.as_ref(),
        (ProxyAt::Node(i), Store::Cluster(c)) => c.nodes.get(i).map(|n| &n.proxy),
        (ProxyAt::Node(_), Store::Single(_)) => None,
    }
}

/// Starts `p`'s fault; what its end needs, and a note.
pub(crate) async fn begin(sys: &mut System, p: &Planned) -> (Active, String) {
    let mut active = Active::default();
    let note = match &p.fault {
        Fault::Kill(t) => {
            if let Some(mut proc) = service_mut(sys, *t).proc.take() {
                proc.kill9();
            }
            String::new()
        }
        Fault::Pause(t) => {
            if let Some(proc) = &service_mut(sys, *t).proc {
                proc.signal("STOP");
            }
            String::new()
        }
        Fault::Restart(t) => {
            if let Some(proc) = &service_mut(sys, *t).proc {
                proc.signal("TERM");
            }
            String::new()
        }
        Fault::RedisKill => match &mut sys.store {
            Store::Single(r) => {
                r.kill();
                String::new()
            }
            Store::Cluster(_) => "not on a cluster".into(),
        },
        Fault::RedisPause => match &sys.store {
            Store::Single(r) => {
                r.signal("STOP");
                String::new()
            }
            Store::Cluster(_) => "not on a cluster".into(),
        },
        Fault::MasterKill | Fault::NodePause(_) => {
            let waited = cluster_ok_first(sys).await;
            waited + &node_fault(sys, &p.fault)
        }
        Fault::Stall(at, pattern) => match proxy(sys, *at) {
            Some(px) => {
                active.trigger = Some(px.stall_next(pattern.as_bytes(), p.length));
                String::new()
            }
            None => "no proxy".into(),
        },
        Fault::Reset(at, pattern, reply) => match proxy(sys, *at) {
            Some(px) => {
                active.trigger = Some(px.reset_after_next(pattern.as_bytes(), *reply));
                String::new()
            }
            None => "no proxy".into(),
        },
        Fault::Latency(at, l) => set_latency(sys, *at, *l),
        Fault::LinkStall(at) => set_latency(sys, *at, p.length),
        Fault::Cut(at) => match proxy(sys, *at) {
            Some(px) => {
                px.refuse_for(p.length);
                String::new()
            }
            None => "no proxy".into(),
        },
    };
    (active, note)
}

/// Kills a live master, or stops node `i`; which node and its role.
fn node_fault(sys: &mut System, fault: &Fault) -> String {
    let Store::Cluster(c) = &mut sys.store else {
        return "not on a single Redis".into();
    };
    match fault {
        Fault::MasterKill => match c.nodes.iter().position(|n| n.is_master()) {
            Some(i) => {
                c.nodes[i].kill();
                format!("node{i} killed")
            }
            None => "no live master".into(),
        },
        Fault::NodePause(i) => {
            let role = if c.nodes[*i].is_master() {
                "master"
            } else {
                "replica"
            };
            c.nodes[*i].signal("STOP");
            format!("a {role}")
        }
        _ => String::new(),
    }
}

fn set_latency(sys: &System, at: ProxyAt, l: Duration) -> String {
    match proxy(sys, at) {
        Some(px) => {
            px.set_latency(l);
            String::new()
        }
        None => "no proxy".into(),
    }
}

/// Ends `p`'s fault (waits, bounded, until what it broke is back); a note.
pub(crate) async fn end(sys: &mut System, p: &Planned, active: Active) -> String {
    match &p.fault {
        Fault::Kill(t) => start_note(service_mut(sys, *t).start_if_down()),
        Fault::Pause(t) => {
            if let Some(proc) = &service_mut(sys, *t).proc {
                proc.signal("CONT");
            }
            String::new()
        }
        Fault::Restart(t) => {
            let s = service_mut(sys, *t);
            let mut note = String::new();
            if let Some(mut proc) = s.proc.take() {
                if proc.is_running() {
                    note = "still draining at the end; SIGKILL. ".into();
                    proc.kill9();
                }
            }
            note + &start_note(s.start_if_down())
        }
        Fault::RedisKill => match &mut sys.store {
            Store::Single(r) => restart_note(r.restart().await),
            Store::Cluster(_) => String::new(),
        },
        Fault::RedisPause => {
            if let Store::Single(r) = &sys.store {
                r.signal("CONT");
            }
            String::new()
        }
        Fault::MasterKill | Fault::NodePause(_) => cluster_back(sys),
        Fault::Stall(at, _) | Fault::Reset(at, ..) => {
            if let Some(px) = proxy(sys, *at) {
                px.disarm();
            }
            match active.trigger {
                Some(t) if t.has_fired() => "fired".into(),
                Some(_) => "never matched".into(),
                None => String::new(),
            }
        }
        Fault::Latency(at, _) | Fault::LinkStall(at) => set_latency(sys, *at, Duration::ZERO),
        Fault::Cut(_) => String::new(),
    }
}

/// Resumes stopped nodes and starts killed ones; the next node fault (or
/// the heal) waits until the cluster is ok again.
fn cluster_back(sys: &mut System) -> String {
    let Store::Cluster(c) = &mut sys.store else {
        return String::new();
    };
    let mut note = String::new();
    for (i, n) in c.nodes.iter_mut().enumerate() {
        if n.is_up() {
            n.signal("CONT");
        } else if let Err(e) = n.restart() {
            note = format!("node{i} did not start: {e}");
        } else {
            note = format!("node{i} started again");
        }
    }
    note
}

/// Before a node fault: waits (at most 30 s) until the cluster is ok, so
/// that no fault hits a shard whose replica has not caught up (a loss the
/// settings do not promise to survive); a note when it had to wait.
async fn cluster_ok_first(sys: &System) -> String {
    let Store::Cluster(c) = &sys.store else {
        return String::new();
    };
    if c.is_ok() {
        return String::new();
    }
    let t = std::time::Instant::now();
    match c.wait_ok(Duration::from_secs(30)).await {
        Ok(()) => format!("(cluster ok after {:.1} s) ", t.elapsed().as_secs_f64()),
        Err(e) => format!("(cluster NOT ok after 30 s: {e:#}) "),
    }
}

fn start_note(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "started again".into(),
        Err(e) => format!("did not start: {e}"),
    }
}

fn restart_note(r: anyhow::Result<()>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!("did not come back: {e:#}"),
    }
}

/// Runs `plan` from `start`: each fault's begin and end at their due
/// times, in time order (an end before a begin due at the same time),
/// printing each step. A slow step delays the ones after it; the printed
/// times are the real ones.
pub(crate) async fn run(sys: &mut System, plan: &[Planned], start: tokio::time::Instant) {
    let mut steps: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        steps.push((p.at, true, i));
        steps.push((p.end(), false, i));
    }
    steps.sort_by_key(|&(t, is_begin, i)| (t, is_begin, i));
    let mut active: Vec<Option<Active>> = plan.iter().map(|_| None).collect();
    for (t, is_begin, i) in steps {
        tokio::time::sleep_until(start + t).await;
        let p = &plan[i];
        let note = if is_begin {
            let (a, note) = begin(sys, p).await;
            active[i] = Some(a);
            note
        } else {
            end(sys, p, active[i].take().unwrap_or_default()).await
        };
        let now = start.elapsed().as_secs_f64();
        let sep = if note.is_empty() { "" } else { ": " };
        if is_begin {
            let ms = p.length.as_millis();
            println!("  +{now:6.1}s  #{i} {} for {ms} ms{sep}{note}", p.fault);
        } else {
            println!("  +{now:6.1}s  #{i} ends{sep}{note}");
        }
    }
}
