//! A real Redis Cluster on loopback for tests: `redis-server --cluster-enabled
//! yes` processes joined by `redis-cli --cluster create`, with or without one
//! replica per master, optionally each behind a fault proxy
//! ([`RedisCluster::start_proxied`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use chat_tests::fault_proxy::FaultProxy;

use super::{scratch_dir, Proc, DEADLINE, FAST_GW};

/// One node of a test cluster.
pub struct Node {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    /// The fault proxy in front of this node: the node announces the
    /// proxy's port (`cluster-announce-port`), so every cluster client
    /// (and replica) reaches the node through it.
    pub proxy: Option<FaultProxy>,
}

/// A cluster of `masters` masters and `replicas` replicas per master.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
}

use chat_tests::procs::free_cluster_port;

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Node {
    fn boot(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "1500"])
            .args(["--dir", self.dir.to_str().unwrap()]);
        if let Some(proxy) = &self.proxy {
            cmd.args(["--cluster-announce-port", &proxy.port().to_string()])
                .args([
                    "--cluster-announce-bus-port",
                    &(self.port + 10_000).to_string(),
                ]);
        }
        self.proc = Some(Proc::spawn("redis-node", cmd, &self.dir));
    }

    /// The output of `redis-cli -p <port> <args>`.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts a killed node again on its port with its `nodes.conf`: it
    /// rejoins the cluster (a former master comes back as a replica of the
    /// replica that took over).
    pub fn restart(&mut self) {
        self.kill();
        self.boot();
    }

    /// The port clients use: the proxy's when there is one.
    pub fn client_port(&self) -> u16 {
        self.proxy.as_ref().map_or(self.port, FaultProxy::port)
    }

    /// Whether this node answers and calls itself a master.
    pub fn is_master(&self) -> bool {
        self.proc.is_some() && self.cli(&["role"]).starts_with("master")
    }
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok` (and every replica is in sync).
    pub async fn start(masters: usize, replicas: usize) -> Self {
        Self::start_inner(masters, replicas, false).await
    }

    /// Like [`Self::start`], with a pass-through [`FaultProxy`] in front of
    /// every node ([`Node::proxy`]): clients that discover the cluster
    /// from any node talk to every node through its proxy.
    pub async fn start_proxied(masters: usize, replicas: usize) -> Self {
        Self::start_inner(masters, replicas, true).await
    }

    async fn start_inner(masters: usize, replicas: usize, proxied: bool) -> Self {
        let total = masters * (1 + replicas);
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..total {
            let port = free_cluster_port();
            let proxy = if proxied {
                let upstream = format!("127.0.0.1:{port}").parse().unwrap();
                Some(
                    FaultProxy::start(upstream)
                        .await
                        .expect("start a fault proxy"),
                )
            } else {
                None
            };
            nodes.push(Node {
                port,
                dir: scratch_dir(&format!("cluster-node-{i}")),
                proc: None,
                proxy,
            });
        }
        for n in &mut nodes {
            n.boot();
        }
        let end = Instant::now() + DEADLINE;
        for n in &nodes {
            while n.cli(&["ping"]).trim() != "PONG" {
                assert!(
                    Instant::now() < end,
                    "cluster node {} did not start",
                    n.port
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok(Duration::from_secs(30)).await;
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok`, knows every
    /// slot, and every replica's link to its master is up.
    pub async fn wait_ok(&self, deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let ok = self.nodes.iter().filter(|n| n.proc.is_some()).all(|n| {
                let info = n.cli(&["cluster", "info"]);
                let repl = n.cli(&["info", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (!repl.contains("role:slave") || repl.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < end, "cluster did not become ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The services' `REDIS_URL`: every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.client_port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// A cluster connection for assertions.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.client_port()))
            .collect();
        redis::cluster::ClusterClient::new(nodes)
            .unwrap()
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// The port of the master that serves `slot` now.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.try_master_of(slot)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The port of the live master that serves `slot`, if any (none while
    /// its failed master is not replaced yet).
    pub fn try_master_of(&self, slot: u16) -> Option<u16> {
        let live = self.nodes.iter().find(|n| n.proc.is_some()).unwrap();
        for line in live.cli(&["cluster", "nodes"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let announced: u16 = f[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap();
            let port = self.node_port(announced);
            for range in &f[8..] {
                if range.starts_with('[') {
                    continue;
                }
                let (lo, hi) = match range.split_once('-') {
                    Some((a, b)) => (a.parse::<u16>().unwrap(), b.parse::<u16>().unwrap()),
                    None => {
                        let s = range.parse::<u16>().unwrap();
                        (s, s)
                    }
                };
                if (lo..=hi).contains(&slot) {
                    return Some(port);
                }
            }
        }
        None
    }

    /// The node's own port for a port it announces (its proxy's, if any).
    fn node_port(&self, announced: u16) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.proxy.as_ref().is_some_and(|p| p.port() == announced))
            .map_or(announced, |n| n.port)
    }

    /// The fault proxy in front of the node on `port`.
    pub fn proxy(&self, port: u16) -> &FaultProxy {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.proxy.as_ref())
            .expect("a proxied node")
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }

    /// The cluster node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        cli(port, &["cluster", "myid"]).trim().to_owned()
    }

    /// Moves `slot` (and its keys) to the master on `to`, as `redis-cli
    /// --cluster reshard` does for each slot it moves.
    pub async fn move_slot(&self, slot: u16, to: u16) {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let s = slot.to_string();
        cli(to, &["cluster", "setslot", &s, "importing", &from_id]);
        cli(from, &["cluster", "setslot", &s, "migrating", &to_id]);
        loop {
            let keys = cli(from, &["cluster", "getkeysinslot", &s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1"];
            let to_port = to.to_string();
            args.extend([to_port.as_str(), "", "0", "5000", "keys"]);
            args.extend(keys);
            cli(from, &args);
        }
        for n in self.nodes.iter().filter(|n| n.is_master()) {
            n.cli(&["cluster", "setslot", &s, "node", &to_id]);
        }
        let end = Instant::now() + DEADLINE;
        while self.master_of(slot) != to {
            assert!(Instant::now() < end, "slot {slot} did not move");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The records of `messages:<room>`, parsed, oldest first.
    pub async fn stored_records(&self, room: &str) -> Vec<serde_json::Value> {
        let mut c = self.conn().await;
        super::records_in(&mut c, room).await
    }
}

/// A process's environment settings.
pub type Env = Vec<(&'static str, &'static str)>;

/// Settings of the failover tests with `ACK_AFTER_REPLICAS=1` (replica acks
/// with short timeouts, 16 stream shards): the worker's and the gateways'.
pub fn replica_ack_env() -> (Env, Env) {
    let ack = [
        ("ACK_AFTER_REPLICAS", "1"),
        ("ACK_REPLICAS_TIMEOUT_MS", "500"),
        ("REDIS_TIMEOUT_MS", "1000"),
        ("STREAM_SHARDS", "16"),
    ];
    let worker = [&[("LEASE_TTL_MS", "1500")][..], &ack].concat();
    let gateway = [FAST_GW, &ack].concat();
    (worker, gateway)
}
