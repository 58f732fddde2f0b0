//! Redis for whole-system runs (the nemesis): one durable `redis-server`
//! (`appendonly yes`, `appendfsync always`, so a SIGKILLed server restarts
//! with every write it acknowledged), or a durable Redis Cluster of masters
//! with replicas, each node behind a [`FaultProxy`] that it announces as its
//! address, so that every client reaches every node through its proxy.
//!
//! A copy, reduced and made non-panicking, of `tests/common/cluster.rs`
//! (integration tests only): a binary cannot use that module.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fault_proxy::FaultProxy;
use crate::procs::{free_cluster_port, free_port, scratch_dir, Proc};

/// The arguments that make a server durable for the nemesis. A server never
/// truncates a damaged append-only file itself (`aof-load-truncated no`):
/// see [`repair_aof`].
const DURABLE: [&str; 8] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
    "--aof-load-truncated",
    "no",
];

/// Before a server starts again after a crash: `redis-check-aof --fix` on
/// its append-only files, which cuts a transaction the crash left half
/// written **before its `MULTI`**.
///
/// Why not the server's own `aof-load-truncated yes`: Redis 7.0 (seen with
/// 7.0.15; valkey fixed it in PR 4342) cuts a half-written `MULTI`/`EXEC`
/// block (a Lua script's writes) after its last whole command, leaving an
/// open `MULTI` in the file. At the next load that transaction either
/// swallows the writes appended after it, up to the next `EXEC` (a script
/// applied half: the nemesis found a `seq` counted with no record in
/// history), or, with no `EXEC` after it, is dropped with every write
/// acknowledged since (acked writes lost). `tests/tests/redis_aof.rs` shows
/// both.
///
/// # Errors
/// When `redis-check-aof` cannot run or cannot repair the files.
pub fn repair_aof(dir: &Path) -> anyhow::Result<()> {
    let manifest = dir.join("appendonlydir").join("appendonly.aof.manifest");
    if !manifest.exists() {
        return Ok(());
    }
    let mut child = Command::new("redis-check-aof")
        .arg("--fix")
        .arg(&manifest)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"y\n");
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "redis-check-aof --fix failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// The output of `redis-cli -p <port> <args>` (empty when it cannot run,
/// or does not finish within 5 s: a SIGSTOPped server never answers).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("timeout")
        .args(["5", "redis-cli", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Waits until `redis-cli -p <port> ping` answers `PONG`.
async fn wait_pong(port: u16, deadline: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    while cli(port, &["ping"]).trim() != "PONG" {
        anyhow::ensure!(Instant::now() < end, "redis on {port} did not answer PING");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// One durable `redis-server` on a loopback port, restartable with its data.
#[derive(Debug)]
pub struct DurableRedis {
    /// Its port (kept across restarts).
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl DurableRedis {
    /// Starts a server with its files in a fresh directory under `base`.
    ///
    /// # Errors
    /// When it does not answer within 10 s.
    pub async fn start(base: &Path) -> anyhow::Result<Self> {
        let mut r = Self {
            port: free_port(),
            dir: scratch_dir(base, "redis"),
            proc: None,
        };
        r.boot().await?;
        Ok(r)
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(DURABLE)
            .arg("--dir")
            .arg(&self.dir);
        self.proc = Some(Proc::spawn("redis", cmd, &self.dir)?);
        wait_pong(self.port, Duration::from_secs(10)).await
    }

    /// SIGKILL: a crash; the append-only file keeps what was acknowledged.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server, if it runs.
    pub fn signal(&self, signal: &str) {
        if let Some(p) = &self.proc {
            p.signal(signal);
        }
    }

    /// Starts it again on the same port with the same directory, after
    /// [`repair_aof`].
    ///
    /// # Errors
    /// When the files cannot be repaired or it does not answer within 10 s.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        repair_aof(&self.dir)?;
        self.boot().await
    }

    /// The directory of its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// One node of a [`DurableCluster`].
#[derive(Debug)]
pub struct ClusterNode {
    /// The node's own port (its proxy's is what it announces).
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    /// The pass-through fault proxy every client reaches this node through.
    pub proxy: FaultProxy,
}

impl ClusterNode {
    fn boot(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(DURABLE)
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1500"])
            .args(["--cluster-announce-port", &self.proxy.port().to_string()])
            .args([
                "--cluster-announce-bus-port",
                &(self.port + 10_000).to_string(),
            ])
            .arg("--dir")
            .arg(&self.dir);
        self.proc = Some(Proc::spawn("redis-node", cmd, &self.dir)?);
        Ok(())
    }

    /// Whether the node process runs (it may have been killed by a fault).
    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }

    /// Whether this node answers and calls itself a master.
    pub fn is_master(&self) -> bool {
        self.is_up() && cli(self.port, &["role"]).starts_with("master")
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the node, if it runs.
    pub fn signal(&self, signal: &str) {
        if let Some(p) = &self.proc {
            p.signal(signal);
        }
    }

    /// Starts a killed node again with its `nodes.conf` and append-only
    /// file (after [`repair_aof`]): it rejoins (a replaced master comes back as a replica).
    ///
    /// # Errors
    /// When redis-server cannot be started.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        repair_aof(&self.dir).map_err(std::io::Error::other)?;
        self.boot()
    }
}

/// A durable Redis Cluster on loopback, every node behind a fault proxy.
#[derive(Debug)]
pub struct DurableCluster {
    /// Masters first as created; roles change with failovers.
    pub nodes: Vec<ClusterNode>,
}

impl DurableCluster {
    /// Starts `masters` masters with `replicas` replicas each, creates the
    /// cluster and waits until it is ok.
    ///
    /// # Errors
    /// When a node does not start or the cluster does not become ok in 30 s.
    pub async fn start(base: &Path, masters: usize, replicas: usize) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for i in 0..masters * (1 + replicas) {
            let port = free_cluster_port();
            let proxy = FaultProxy::start(format!("127.0.0.1:{port}").parse()?).await?;
            let mut node = ClusterNode {
                port,
                dir: scratch_dir(base, &format!("node{i}")),
                proc: None,
                proxy,
            };
            node.boot()?;
            nodes.push(node);
        }
        for n in &nodes {
            wait_pong(n.port, Duration::from_secs(10)).await?;
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
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Whether every live node reports `cluster_state:ok` with every slot
    /// served and its replication link up.
    pub fn is_ok(&self) -> bool {
        self.nodes.iter().filter(|n| n.is_up()).all(|n| {
            let info = cli(n.port, &["cluster", "info"]);
            let repl = cli(n.port, &["info", "replication"]);
            info.contains("cluster_state:ok")
                && info.contains("cluster_slots_ok:16384")
                && (!repl.contains("role:slave") || repl.contains("master_link_status:up"))
        })
    }

    /// Waits until [`Self::is_ok`].
    ///
    /// # Errors
    /// When it is not ok by `deadline`.
    pub async fn wait_ok(&self, deadline: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + deadline;
        while !self.is_ok() {
            anyhow::ensure!(Instant::now() < end, "the cluster did not become ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The services' `REDIS_URL`: every node's proxy as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.proxy.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// A cluster connection through the proxies of the live nodes.
    ///
    /// # Errors
    /// When no connection can be made.
    pub async fn conn(&self) -> anyhow::Result<redis::cluster_async::ClusterConnection> {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| format!("redis://127.0.0.1:{}", n.proxy.port()))
            .collect();
        Ok(redis::cluster::ClusterClient::new(nodes)?
            .get_async_connection()
            .await?)
    }
}
