//! Fault schedules, drawn from the seed ([`plan`]) before anything runs, so
//! a seed names one schedule. Every fault has a start and an end (applied by
//! [`crate::apply`]); faults overlap in time, up to [`MAX_ACTIVE`] at once,
//! but never two on the same [`Resource`] (a process, Redis, a proxy), so
//! each keeps its meaning (a pause is not ended by another fault's restart).
//!
//! Process faults: SIGKILL (and a start after a while), SIGSTOP/SIGCONT, a
//! graceful restart (SIGTERM, start again after the drain). Redis faults: a
//! single server SIGKILLed and started again with its append-only file, or
//! SIGSTOPped and resumed; on a cluster, a master SIGKILLed so its replica
//! is promoted (then started again: it rejoins as a replica), or any node
//! SIGSTOPped (a master stopped past the node timeout is failed over and
//! wakes up as a stale master). Network faults, through the proxy of one
//! process (single Redis) or of one node (cluster): a stalled request that
//! runs late, a connection reset after a request was forwarded (with or
//! without its reply), added latency, a stall of the whole link, and a
//! cut-off.

use std::fmt;
use std::time::Duration;

use chat_tests::fault_proxy::Reply;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::system::{GATEWAYS, WORKERS};

/// Most faults active at one moment.
pub(crate) const MAX_ACTIVE: usize = 3;
/// Cluster nodes (3 masters + 3 replicas).
pub(crate) const NODES: usize = 6;

/// A gateway or a worker, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What a fault occupies while it is active: no two active faults share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// A gateway or worker process.
    Process(Target),
    /// The Redis server, or the cluster's topology (one node fault at a time).
    Redis,
    /// One proxy.
    Proxy(ProxyAt),
}

/// Byte patterns of commands a one-shot proxy fault targets: the
/// gateway's append (its argv holds the message text), the worker's
/// scripts, stream reads and acks, pub/sub publishes.
const PATTERNS: [&str; 5] = ["nemesis-msg", "EVALSHA", "XREADGROUP", "XACK", "PUBLISH"];

/// One fault; its length is in its [`Planned`].
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    /// SIGKILL; start again at the end.
    Kill(Target),
    /// SIGSTOP; SIGCONT at the end.
    Pause(Target),
    /// SIGTERM; at the end (6–9 s later, past the 5 s drain) start again
    /// (SIGKILL first if it is still draining).
    Restart(Target),
    /// Single Redis: SIGKILL; start again at the end.
    RedisKill,
    /// Single Redis: SIGSTOP; SIGCONT at the end.
    RedisPause,
    /// Cluster: SIGKILL a master (its replica is promoted); at the end start
    /// it again and wait until the cluster is ok.
    MasterKill,
    /// Cluster: SIGSTOP node `i`; SIGCONT at the end, wait until ok.
    NodePause(usize),
    /// Hold the next matching command for the fault's length, then forward it.
    Stall(ProxyAt, &'static str),
    /// Forward the next matching command, then reset its connection.
    Reset(ProxyAt, &'static str, Reply),
    /// Added latency on every command until the end.
    Latency(ProxyAt, Duration),
    /// Every command held for the fault's length, until the end: the link stalls.
    LinkStall(ProxyAt),
    /// Cut off from Redis (connections reset and refused) until the end.
    Cut(ProxyAt),
}

impl Fault {
    /// The kind's name, for the counts per kind.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(Target::Gateway(_)) => "gateway_kill",
            Fault::Kill(Target::Worker(_)) => "worker_kill",
            Fault::Pause(Target::Gateway(_)) => "gateway_pause",
            Fault::Pause(Target::Worker(_)) => "worker_pause",
            Fault::Restart(Target::Gateway(_)) => "gateway_restart",
            Fault::Restart(Target::Worker(_)) => "worker_restart",
            Fault::RedisKill => "redis_kill",
            Fault::RedisPause => "redis_pause",
            Fault::MasterKill => "master_failover",
            Fault::NodePause(_) => "node_pause",
            Fault::Stall(..) => "request_stall",
            Fault::Reset(..) => "reset_after_request",
            Fault::Latency(..) => "latency",
            Fault::LinkStall(_) => "link_stall",
            Fault::Cut(_) => "cut_off",
        }
    }

    /// What the fault occupies while active.
    pub(crate) fn resource(&self) -> Resource {
        match self {
            Fault::Kill(t) | Fault::Pause(t) | Fault::Restart(t) => Resource::Process(*t),
            Fault::RedisKill | Fault::RedisPause | Fault::MasterKill | Fault::NodePause(_) => {
                Resource::Redis
            }
            Fault::Stall(at, _)
            | Fault::Reset(at, ..)
            | Fault::Latency(at, _)
            | Fault::LinkStall(at)
            | Fault::Cut(at) => Resource::Proxy(*at),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(t) => write!(f, "SIGKILL {t}"),
            Fault::Pause(t) => write!(f, "SIGSTOP {t}"),
            Fault::Restart(t) => write!(f, "graceful restart of {t} (SIGTERM)"),
            Fault::RedisKill => write!(f, "SIGKILL redis"),
            Fault::RedisPause => write!(f, "SIGSTOP redis"),
            Fault::MasterKill => write!(f, "SIGKILL a cluster master"),
            Fault::NodePause(i) => write!(f, "SIGSTOP cluster node{i}"),
            Fault::Stall(at, p) => write!(f, "stall next {p:?} on {at}"),
            Fault::Reset(at, p, r) => write!(f, "reset {at} after next {p:?} (reply {r:?})"),
            Fault::Latency(at, l) => write!(f, "latency {} ms on {at}", l.as_millis()),
            Fault::LinkStall(at) => write!(f, "stall every command on {at}"),
            Fault::Cut(at) => write!(f, "cut {at} off"),
        }
    }
}

/// A fault, when it starts and how long it lasts, from the start of the
/// workload.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    /// Start.
    pub(crate) at: Duration,
    /// Length: the end is due at `at + length`.
    pub(crate) length: Duration,
    /// The fault.
    pub(crate) fault: Fault,
}

impl Planned {
    /// When the end is due.
    pub(crate) fn end(&self) -> Duration {
        self.at + self.length
    }
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

/// One fault drawn at random, with its length.
fn draw(rng: &mut StdRng, cluster: bool) -> (Fault, Duration) {
    let proxy_at = |rng: &mut StdRng| {
        if cluster {
            ProxyAt::Node(rng.random_range(0..NODES))
        } else {
            ProxyAt::Process(target(rng))
        }
    };
    let pattern = |rng: &mut StdRng| PATTERNS[rng.random_range(0..PATTERNS.len())];
    match rng.random_range(0..11) {
        0 => (Fault::Kill(target(rng)), ms(rng, 300, 2500)),
        1 => (Fault::Pause(target(rng)), ms(rng, 300, 3000)),
        2 => (Fault::Restart(target(rng)), ms(rng, 6000, 9000)),
        3 if cluster => (Fault::MasterKill, ms(rng, 4000, 8000)),
        3 => (Fault::RedisKill, ms(rng, 200, 2000)),
        4 if cluster => (
            Fault::NodePause(rng.random_range(0..NODES)),
            ms(rng, 300, 4000),
        ),
        4 => (Fault::RedisPause, ms(rng, 200, 3000)),
        5 => (
            Fault::Stall(proxy_at(rng), pattern(rng)),
            ms(rng, 500, 3000),
        ),
        6 => {
            let reply = if rng.random_bool(0.5) {
                Reply::Drop
            } else {
                Reply::Deliver
            };
            let at = proxy_at(rng);
            (
                Fault::Reset(at, pattern(rng), reply),
                Duration::from_secs(1),
            )
        }
        7 => {
            let l = ms(rng, 20, 400);
            (Fault::Latency(proxy_at(rng), l), ms(rng, 1000, 4000))
        }
        8 => (Fault::LinkStall(proxy_at(rng)), ms(rng, 500, 3000)),
        _ => (Fault::Cut(proxy_at(rng)), ms(rng, 300, 3000)),
    }
}

/// The schedule of `seed`: a fault starts every 0.3–2.5 s from 2 s on, so
/// they overlap, unless [`MAX_ACTIVE`] are active or its resource is busy
/// (then another is drawn, or the start moves on); every fault ends 4 s
/// before `duration` at the latest. Sorted by start.
pub(crate) fn plan(seed: u64, duration: Duration, cluster: bool) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut at = Duration::from_secs(2);
    let last_end = duration.saturating_sub(Duration::from_secs(4));
    let mut out: Vec<Planned> = Vec::new();
    while at < last_end {
        let active: Vec<&Planned> = out.iter().filter(|p| p.end() > at).collect();
        if active.len() < MAX_ACTIVE {
            for _ in 0..4 {
                let (fault, length) = draw(&mut rng, cluster);
                let free = active
                    .iter()
                    .all(|p| p.fault.resource() != fault.resource());
                if free && at + length <= last_end {
                    out.push(Planned { at, length, fault });
                    break;
                }
            }
        }
        at += ms(&mut rng, 300, 2500);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_overlaps_faults_but_never_on_one_resource() {
        for cluster in [false, true] {
            let p = plan(7, Duration::from_secs(120), cluster);
            assert_eq!(p.len(), plan(7, Duration::from_secs(120), cluster).len());
            let mut overlaps = 0;
            for (i, a) in p.iter().enumerate() {
                assert!(a.end() <= Duration::from_secs(116));
                for b in &p[i + 1..] {
                    if b.at < a.end() {
                        overlaps += 1;
                        assert_ne!(a.fault.resource(), b.fault.resource(), "{a:?} {b:?}");
                    }
                }
            }
            assert!(overlaps > 0, "no overlap in {p:?}");
        }
    }
}
