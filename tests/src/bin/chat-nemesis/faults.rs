//! Fault schedules: drawn from the seed ([`plan`]) before anything runs, so
//! a seed names one schedule, then applied one after the other
//! ([`apply`]): each fault ends (the process is back, the proxy healed)
//! before the next one starts, and every duration is bounded.
//!
//! Process faults: SIGKILL (and a start after a pause), SIGSTOP/SIGCONT,
//! a graceful restart (SIGTERM, wait for the exit, start). Redis faults: a
//! single server SIGKILLed and started again with its append-only file; on
//! a cluster, a master SIGKILLed so its replica is promoted, then started
//! again (it rejoins as a replica). Network faults, through the proxy of one
//! process (single Redis) or of one node (cluster): a stalled request that
//! runs late, a connection reset after a request was forwarded (with or
//! without its reply), added latency, and a cut-off.

use std::fmt;
use std::time::Duration;

use chat_tests::fault_proxy::{FaultProxy, Reply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::system::{Store, System, GATEWAYS, WORKERS};

/// A gateway or a worker, by index.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// `gw<i>`.
    Gateway(usize),
    /// `w<i>`.
    Worker(usize),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Gateway(i) => write!(f, "gw{i}"),
            Target::Worker(i) => write!(f, "w{i}"),
        }
    }
}

/// Whose proxy a network fault uses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ProxyAt {
    /// The process's own proxy (single Redis).
    Process(Target),
    /// The proxy of cluster node `i`.
    Node(usize),
}

impl fmt::Display for ProxyAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyAt::Process(t) => write!(f, "{t}'s Redis link"),
            ProxyAt::Node(i) => write!(f, "node{i}'s proxy"),
        }
    }
}

/// Byte patterns of commands a one-shot proxy fault targets: the
/// gateway's append (its argv holds the message text), the worker's
/// scripts, stream reads and acks, pub/sub publishes.
const PATTERNS: [&str; 5] = ["nemesis-msg", "EVALSHA", "XREADGROUP", "XACK", "PUBLISH"];

/// One fault.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// SIGKILL, start again after the pause.
    Kill(Target, Duration),
    /// SIGSTOP, SIGCONT after the pause.
    Pause(Target, Duration),
    /// SIGTERM, wait for the exit, start again.
    Restart(Target),
    /// Single Redis: SIGKILL, start again after the pause.
    RedisKill(Duration),
    /// Cluster: SIGKILL a master; wait for its replica's promotion; start it again.
    MasterKill,
    /// Hold the next matching command for a while, then forward it.
    Stall(ProxyAt, &'static str, Duration),
    /// Forward the next matching command, then reset its connection.
    Reset(ProxyAt, &'static str, Reply),
    /// Added latency on every command for a while.
    Latency(ProxyAt, Duration, Duration),
    /// Cut off from Redis (connections reset and refused) for a while.
    Cut(ProxyAt, Duration),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_millis();
        match self {
            Fault::Kill(t, d) => write!(f, "SIGKILL {t}, start again after {} ms", ms(d)),
            Fault::Pause(t, d) => write!(f, "SIGSTOP {t}, SIGCONT after {} ms", ms(d)),
            Fault::Restart(t) => write!(f, "graceful restart of {t} (SIGTERM, start)"),
            Fault::RedisKill(d) => write!(f, "SIGKILL redis, start again after {} ms", ms(d)),
            Fault::MasterKill => write!(f, "SIGKILL a cluster master, replica promoted"),
            Fault::Stall(at, p, d) => write!(f, "stall next {p:?} on {at} by {} ms", ms(d)),
            Fault::Reset(at, p, r) => write!(f, "reset {at} after next {p:?} (reply {r:?})"),
            Fault::Latency(at, l, d) => {
                write!(f, "latency {} ms on {at} for {} ms", ms(l), ms(d))
            }
            Fault::Cut(at, d) => write!(f, "cut {at} off for {} ms", ms(d)),
        }
    }
}

/// A fault and when it is due, from the start of the workload.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    /// Due time.
    pub(crate) at: Duration,
    /// The fault.
    pub(crate) fault: Fault,
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

fn target(rng: &mut StdRng) -> Target {
    if rng.random_bool(0.5) {
        Target::Gateway(rng.random_range(0..GATEWAYS))
    } else {
        Target::Worker(rng.random_range(0..WORKERS))
    }
}

/// The schedule of `seed`: faults from 2 s on, a pause of 1–3 s after each
/// one's own length, none due in the last 4 s of `duration`.
pub(crate) fn plan(seed: u64, duration: Duration, cluster: bool) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at = Duration::from_secs(2);
    let mut out = Vec::new();
    while at + Duration::from_secs(4) < duration {
        let proxy_at = |rng: &mut StdRng| {
            if cluster {
                ProxyAt::Node(rng.random_range(0..6))
            } else {
                ProxyAt::Process(target(rng))
            }
        };
        let (fault, length) = match rng.random_range(0..9) {
            0 => {
                let d = ms(&mut rng, 300, 2500);
                (Fault::Kill(target(&mut rng), d), d)
            }
            1 => {
                let d = ms(&mut rng, 300, 3000);
                (Fault::Pause(target(&mut rng), d), d)
            }
            2 => (Fault::Restart(target(&mut rng)), Duration::from_secs(2)),
            3 if cluster => (Fault::MasterKill, Duration::from_secs(5)),
            3 => {
                let d = ms(&mut rng, 200, 2000);
                (Fault::RedisKill(d), d)
            }
            4 => {
                let p = PATTERNS[rng.random_range(0..PATTERNS.len())];
                let d = ms(&mut rng, 500, 3000);
                (Fault::Stall(proxy_at(&mut rng), p, d), d)
            }
            5 => {
                let p = PATTERNS[rng.random_range(0..PATTERNS.len())];
                let reply = if rng.random_bool(0.5) {
                    Reply::Drop
                } else {
                    Reply::Deliver
                };
                (
                    Fault::Reset(proxy_at(&mut rng), p, reply),
                    Duration::from_secs(1),
                )
            }
            6 => {
                let l = ms(&mut rng, 20, 400);
                let d = ms(&mut rng, 1000, 4000);
                (Fault::Latency(proxy_at(&mut rng), l, d), d)
            }
            _ => {
                let d = ms(&mut rng, 300, 3000);
                (Fault::Cut(proxy_at(&mut rng), d), d)
            }
        };
        out.push(Planned { at, fault });
        at += length + ms(&mut rng, 1000, 3000);
    }
    out
}

fn service_mut(sys: &mut System, t: Target) -> &mut crate::system::Service {
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

/// Applies `fault` and waits until it is over (the system healed); a short
/// note on what happened (e.g. which master was killed).
pub(crate) async fn apply(sys: &mut System, fault: &Fault) -> String {
    match fault {
        Fault::Kill(t, d) => {
            let s = service_mut(sys, *t);
            if let Some(mut p) = s.proc.take() {
                p.kill9();
            }
            tokio::time::sleep(*d).await;
            restart_note(s.ensure_up().await)
        }
        Fault::Pause(t, d) => {
            let s = service_mut(sys, *t);
            if let Some(p) = &s.proc {
                p.signal("STOP");
                tokio::time::sleep(*d).await;
                p.signal("CONT");
            }
            String::new()
        }
        Fault::Restart(t) => {
            let s = service_mut(sys, *t);
            let mut note = String::new();
            if let Some(mut p) = s.proc.take() {
                p.signal("TERM");
                if !p.wait_exit(Duration::from_secs(15)).await {
                    note = "did not exit within 15 s of SIGTERM; killed. ".into();
                    p.kill9();
                }
            }
            note + &restart_note(s.ensure_up().await)
        }
        Fault::RedisKill(d) => {
            let Store::Single(r) = &mut sys.store else {
                return "not on a cluster".into();
            };
            r.kill();
            tokio::time::sleep(*d).await;
            match r.restart().await {
                Ok(()) => String::new(),
                Err(e) => format!("redis did not come back: {e:#}"),
            }
        }
        Fault::MasterKill => master_kill(sys).await,
        Fault::Stall(at, pattern, d) => {
            let Some(p) = proxy(sys, *at) else {
                return "no proxy".into();
            };
            let fired = p.stall_next(pattern.as_bytes(), *d);
            tokio::time::sleep(*d + Duration::from_millis(500)).await;
            p.disarm();
            fired_note(fired.has_fired())
        }
        Fault::Reset(at, pattern, reply) => {
            let Some(p) = proxy(sys, *at) else {
                return "no proxy".into();
            };
            let fired = p.reset_after_next(pattern.as_bytes(), *reply);
            tokio::time::sleep(Duration::from_secs(1)).await;
            p.disarm();
            fired_note(fired.has_fired())
        }
        Fault::Latency(at, l, d) => {
            let Some(p) = proxy(sys, *at) else {
                return "no proxy".into();
            };
            p.set_latency(*l);
            tokio::time::sleep(*d).await;
            p.set_latency(Duration::ZERO);
            String::new()
        }
        Fault::Cut(at, d) => {
            let Some(p) = proxy(sys, *at) else {
                return "no proxy".into();
            };
            p.refuse_for(*d);
            tokio::time::sleep(*d).await;
            String::new()
        }
    }
}

fn restart_note(r: anyhow::Result<()>) -> String {
    match r {
        Ok(()) => String::new(),
        Err(e) => format!("did not come back: {e:#}"),
    }
}

fn fired_note(fired: bool) -> String {
    if fired {
        "fired".into()
    } else {
        "never matched".into()
    }
}

/// Kills the first live master, waits for the cluster to be ok again
/// (a replica promoted), starts the killed node, waits again.
async fn master_kill(sys: &mut System) -> String {
    let Store::Cluster(c) = &mut sys.store else {
        return "not on a single Redis".into();
    };
    let Some(i) = c.nodes.iter().position(|n| n.is_master()) else {
        return "no live master".into();
    };
    c.nodes[i].kill();
    // The replica is promoted after cluster-node-timeout (1.5 s) and an election.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let promoted = c.wait_ok(Duration::from_secs(30)).await;
    let restarted = c.nodes[i].restart();
    let back = c.wait_ok(Duration::from_secs(30)).await;
    format!(
        "node{i} killed; failover {}; restarted {}",
        if promoted.is_ok() {
            "ok"
        } else {
            "NOT ok in 30 s"
        },
        match (restarted, back) {
            (Ok(()), Ok(())) => "and rejoined".to_owned(),
            (Err(e), _) => format!("failed: {e}"),
            (_, Err(e)) => format!("but cluster not ok: {e:#}"),
        }
    )
}
