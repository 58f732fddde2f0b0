//! Processes for binaries that drive the whole system (the nemesis): child
//! processes with their output in a log file and signals by PID, free
//! loopback ports, scratch directories, and starting the gateway and worker
//! binaries with a clean environment.
//!
//! The integration tests have their own richer harness in `tests/common`
//! (which a binary cannot use); this module copies the parts a binary needs
//! and adds what the nemesis needs beyond them: a service restarted on the
//! same port, and waits that return an error instead of panicking, because
//! a fault schedule must keep going when one restart is slow.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::http_get;

/// A child process, SIGKILLed when dropped, with its output in a log file.
#[derive(Debug)]
pub struct Proc {
    /// A short name for logs and reports.
    pub name: String,
    child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `<dir>/<name>.log`.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> std::io::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        // SIGCONT first: a stopped process dies of SIGKILL too, but reaping
        // is quicker when it is not stopped.
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, …) to this process by PID.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Waits for the process to exit; `false` if it still runs at the deadline.
    pub async fn wait_exit(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if !self.is_running() {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under `base` for one process's files and log.
///
/// # Panics
/// When the directory cannot be created.
pub fn scratch_dir(base: &Path, tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{tag}-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch dir");
    dir
}

/// Where [`free_port`] looks: below Linux's default ephemeral range
/// (32768–60999), which the kernel draws client sockets' source ports from.
/// A port picked there by binding port 0 and released again can be taken by
/// any outgoing connection (a load generator's, another test's) before the
/// service binds it ("Address already in use": a nemesis schedule that could
/// not start). Below the range only explicit binds compete.
const PORTS: std::ops::Range<u16> = 10_000..32_000;
/// The cluster bus adds 10000 to a node's port: nodes take ports below this,
/// so that the bus port stays below the ephemeral range too.
const CLUSTER_PORTS_END: u16 = 22_000;

/// A free loopback port below `end` and outside the ephemeral range (bound,
/// then released), starting from a random point so that processes picking
/// at once rarely meet.
fn free_port_below(end: u16, also_free: impl Fn(u16) -> bool) -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = u32::from(end - PORTS.start);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let start = seed.wrapping_add(NEXT.fetch_add(7_919, std::sync::atomic::Ordering::Relaxed));
    for i in 0..span {
        let port = PORTS.start + ((start.wrapping_add(i)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && also_free(port) {
            return port;
        }
    }
    panic!("no free loopback port in {}..{end}", PORTS.start);
}

/// A free loopback port (bound, then released), outside the ephemeral range.
///
/// # Panics
/// When no port in the range can be bound.
pub fn free_port() -> u16 {
    free_port_below(PORTS.end, |_| true)
}

/// A free port whose Redis Cluster bus port (`port + 10000`) is free too.
///
/// # Panics
/// When no such port can be bound.
pub fn free_cluster_port() -> u16 {
    free_port_below(CLUSTER_PORTS_END, |p| {
        std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
    })
}

/// Waits until `GET <path>` on `127.0.0.1:<port>` answers 200.
///
/// # Errors
/// When it has not by `deadline`, or when `proc` exited meanwhile.
pub async fn wait_http_ok(
    proc: &mut Proc,
    port: u16,
    path: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let addr = format!("127.0.0.1:{port}");
    let end = Instant::now() + deadline;
    loop {
        if http_get(&addr, path).await.is_ok_and(|(s, _)| s == 200) {
            return Ok(());
        }
        anyhow::ensure!(
            proc.is_running(),
            "{} exited before it was ready",
            proc.name
        );
        anyhow::ensure!(
            Instant::now() < end,
            "{} not ready within {deadline:?}",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How to start one gateway or worker, again and again on the same port.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Path of the binary.
    pub bin: PathBuf,
    /// Name used for the log file and reports (`gw0`, `w1`, …).
    pub name: String,
    /// The env variable that takes the port (`PORT`, `METRICS_PORT`).
    pub port_env: &'static str,
    /// The port it listens on, kept across restarts.
    pub port: u16,
    /// Its environment (besides `PATH`, the port and `BIND_ADDR`).
    pub env: Vec<(String, String)>,
    /// Directory of its log file.
    pub dir: PathBuf,
}

impl ServiceSpec {
    /// Spawns the service with a clean environment, without waiting.
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub fn spawn(&self) -> std::io::Result<Proc> {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(self.port_env, self.port.to_string())
            .env("BIND_ADDR", "127.0.0.1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Proc::spawn(&self.name, cmd, &self.dir)
    }

    /// Spawns the service and waits until its `/readyz` answers 200.
    ///
    /// # Errors
    /// When it does not start or get ready within `deadline`.
    pub async fn start(&self, deadline: Duration) -> anyhow::Result<Proc> {
        let mut proc = self.spawn()?;
        wait_http_ok(&mut proc, self.port, "/readyz", deadline).await?;
        Ok(proc)
    }
}

/// The directory of the running executable: cargo puts the service binaries
/// (`chat-gateway`, `chat-fanout-worker`) next to a `src/bin` binary.
///
/// # Panics
/// When the path of the running executable is unknown.
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().expect("the binary's directory").join(name)
}
