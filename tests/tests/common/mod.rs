//! Test harness: real `redis-server`, real gateway and worker binaries, real
//! WebSocket clients, and waits with deadlines (never a bare sleep).
//!
//! Binaries are the ones cargo puts next to the test executable's `deps/`
//! folder; the harness builds them once per test binary before first use, so
//! they always match the source.

#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod receiver;
pub mod sse;
pub mod store;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// Default deadline for a condition to become true.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A gateway for fault and room tests: no per-connection rate limit in the
/// way, a fast heartbeat, 4 stream shards.
pub const FAST_GW: &[(&str, &str)] = &[
    ("RATE_LIMIT_PER_SEC", "10000"),
    ("RATE_LIMIT_BURST", "10000"),
    ("HEARTBEAT_MS", "200"),
    ("STREAM_SHARDS", "4"),
];

/// A worker that takes over shards and judges gateways dead within seconds.
pub const FAST_WORKER: &[(&str, &str)] = &[
    ("LEASE_TTL_MS", "1500"),
    ("STREAM_SHARDS", "4"),
    ("JANITOR_INTERVAL_MS", "200"),
    ("GATEWAY_TIMEOUT_MS", "1500"),
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory for one test's processes and logs.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("chat-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A free loopback port (bound then released) below the ephemeral range,
/// where no client socket can take it before the service binds it.
pub use chat_tests::procs::free_port;

/// Path of a workspace binary built next to this test executable.
///
/// The first call builds the service binaries with the cargo that runs the
/// tests (a no-op when they are fresh), so a plain `cargo test` never runs
/// stale gateway or worker code.
pub fn bin_path(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    BUILT.get_or_init(|| build_service_binaries(&dir));
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing after the build", p.display());
    p
}

/// Runs `cargo build` for the gateway and worker binaries in the profile of
/// the test executable in `dir`; panics with cargo's output on failure.
fn build_service_binaries(dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "--bins",
        "-p",
        "chat-gateway",
        "-p",
        "chat-fanout-worker",
    ]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    // Cargo sets these for the test process; build scripts that watch them
    // (ring's does) would see other values than in the outer build, and the
    // two builds would keep rebuilding each other's dependencies.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ];
        if per_package.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the service binaries: {e}"));
    assert!(
        out.status.success(),
        "building the gateway and worker binaries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A child process killed when dropped, with its output in a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().unwrap();
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// SIGTERM.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for exit; `None` if still running at the deadline.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Certificates made with `openssl` for a TLS test server: a private CA, a
/// server certificate for `127.0.0.1` / `localhost` and a client certificate,
/// both signed by the CA (rustls rejects a CA certificate used as a server's).
#[derive(Debug, Clone)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Generates the files in `dir` (valid for one day).
    pub fn generate(dir: &Path) -> Self {
        // Arguments are separated by spaces; file names are relative to `dir`.
        let openssl = |args: &str| {
            let out = Command::new("openssl")
                .args(args.split_whitespace())
                .current_dir(dir)
                .output()
                .expect("run openssl (scripts/test installs it)");
            assert!(
                out.status.success(),
                "openssl {args}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl("req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=chat-test-ca");
        for (name, cn, ext) in [
            (
                "server",
                "/CN=localhost",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "client",
                "/CN=chat-test-client",
                "extendedKeyUsage=clientAuth\n",
            ),
        ] {
            std::fs::write(
                dir.join(format!("{name}.ext")),
                format!("basicConstraints=critical,CA:FALSE\n{ext}"),
            )
            .unwrap();
            openssl(&format!(
                "req -newkey rsa:2048 -nodes -keyout {name}.key -out {name}.csr -subj {cn}"
            ));
            openssl(&format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {name}.pem -days 1 -extfile {name}.ext"
            ));
        }
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

/// TLS of a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP only.
    Off,
    /// TLS only (`--port 0`); clients need not present a certificate.
    Server,
    /// TLS only; clients must present a certificate signed by the CA.
    Mutual,
}

/// How a test redis-server is started.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// With an fsync-always append-only file.
    pub durable: bool,
    pub tls: TlsMode,
    /// `requirepass`: the default user's password.
    pub password: Option<String>,
    /// Extra ACL users `(name, password)`, allowed every key, channel and command.
    pub users: Vec<(String, String)>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            durable: false,
            tls: TlsMode::Off,
            password: None,
            users: Vec::new(),
        }
    }
}

/// A private redis-server on a free loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
    opts: RedisOptions,
    /// Set when `opts.tls` is on.
    pub certs: Option<TestCerts>,
}

impl Redis {
    pub async fn start() -> Self {
        Self::start_with(RedisOptions::default()).await
    }

    /// With an fsync-always append-only file: a SIGKILLed server restarts with
    /// every write it acknowledged (for "nothing acked is lost" tests).
    pub async fn start_durable() -> Self {
        Self::start_with(RedisOptions {
            durable: true,
            ..RedisOptions::default()
        })
        .await
    }

    pub async fn start_with(opts: RedisOptions) -> Self {
        let dir = scratch_dir("redis");
        let certs = (opts.tls != TlsMode::Off).then(|| TestCerts::generate(&dir));
        let mut r = Self {
            port: free_port(),
            dir,
            proc: None,
            opts,
            certs,
        };
        // The port is free when picked but bound only when the server starts:
        // on a busy machine something else can take it in between.
        for _ in 0..5 {
            if r.try_boot().await {
                return r;
            }
            r.port = free_port();
        }
        panic!("redis-server: the ports picked for it were taken five times in a row");
    }

    /// Starts the server on its port and waits for PING.
    async fn boot(&mut self) {
        assert!(
            self.try_boot().await,
            "redis-server exited before it answered PING"
        );
    }

    /// Starts the server; `false` when it exited before answering (its port
    /// was taken).
    async fn try_boot(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        match &self.certs {
            None => {
                cmd.args(["--port", &port]);
            }
            Some(c) => {
                let auth_clients = if self.opts.tls == TlsMode::Mutual {
                    "yes"
                } else {
                    "no"
                };
                cmd.args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(&c.server_cert)
                    .arg("--tls-key-file")
                    .arg(&c.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&c.ca)
                    .args(["--tls-auth-clients", auth_clients]);
            }
        }
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            if self.opts.durable { "yes" } else { "no" },
            "--appendfsync",
            "always",
            "--dir",
            self.dir.to_str().unwrap(),
        ]);
        if let Some(pw) = &self.opts.password {
            cmd.args(["--requirepass", pw]);
        }
        for (user, pw) in &self.opts.users {
            cmd.args(["--user", user, "on", &format!(">{pw}"), "~*", "&*", "+@all"]);
        }
        self.proc = Some(Proc::spawn("redis-server", cmd, &self.dir));
        let end = Instant::now() + DEADLINE;
        loop {
            if let Ok(mut c) = self.client().get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return true;
                }
            }
            if !self.proc.as_mut().is_some_and(Proc::is_running) {
                return false;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for: redis-server answers PING"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The URL the services get: `redis://` or `rediss://`, with the default
    /// user's password when there is one.
    pub fn url(&self) -> String {
        match &self.opts.password {
            Some(pw) => self.url_with(&format!(":{pw}")),
            None => format!("{}://127.0.0.1:{}", self.scheme(), self.port),
        }
    }

    /// The URL with `userinfo` (`user:password` or `:password`) in it.
    pub fn url_with(&self, userinfo: &str) -> String {
        format!("{}://{userinfo}@127.0.0.1:{}", self.scheme(), self.port)
    }

    fn scheme(&self) -> &'static str {
        if self.certs.is_some() {
            "rediss"
        } else {
            "redis"
        }
    }

    /// A redis-rs client for [`Self::url`], trusting the test CA and
    /// presenting the client certificate when TLS is on.
    pub fn client(&self) -> redis::Client {
        match &self.certs {
            None => redis::Client::open(self.url()).unwrap(),
            Some(c) => {
                chat_shared::tls::install_crypto_provider();
                let read = |p: &Path| std::fs::read(p).expect("read test certificate");
                let client_tls =
                    (self.opts.tls == TlsMode::Mutual).then(|| redis::ClientTlsConfig {
                        client_cert: read(&c.client_cert),
                        client_key: read(&c.client_key),
                    });
                redis::Client::build_with_tls(
                    self.url(),
                    redis::TlsCertificates {
                        client_tls,
                        root_cert: Some(read(&c.ca)),
                    },
                )
                .unwrap()
            }
        }
    }

    /// Stops the server (SIGKILL: data is gone, as after a crash).
    /// Sends `signal` (e.g. `STOP`, `CONT`) to the server process.
    pub fn signal(&self, signal: &str) {
        self.proc.as_ref().expect("redis is running").signal(signal);
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.boot().await;
    }

    /// A connection for assertions on what Redis holds.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }
}

/// A started gateway.
pub struct Gateway {
    pub port: u16,
    pub id: String,
    pub proc: Proc,
}

impl Gateway {
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?{query}", self.port)
    }
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Starts a gateway against `redis_url` and waits until it is ready.
pub async fn start_gateway(redis_url: &str, id: &str, env: &[(&str, &str)]) -> Gateway {
    let base = [("GATEWAY_ID", id), ("RUST_LOG", "info,chat_gateway=debug")];
    let (port, proc) = start_service(
        "chat-gateway",
        &format!("gateway-{id}"),
        "PORT",
        redis_url,
        &base,
        env,
    )
    .await;
    Gateway {
        port,
        id: id.to_owned(),
        proc,
    }
}

/// A started worker.
pub struct Worker {
    pub metrics_port: u16,
    pub id: String,
    pub proc: Proc,
}

impl Worker {
    /// The address of its metrics and health endpoints.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.metrics_port)
    }
}

/// Starts a worker against `redis_url` and waits until it holds shards.
pub async fn start_worker(redis_url: &str, id: &str, env: &[(&str, &str)]) -> Worker {
    let base = [
        ("WORKER_ID", id),
        ("RUST_LOG", "info"),
        ("READ_BLOCK_MS", "200"),
    ];
    let (port, proc) = start_service(
        "chat-fanout-worker",
        &format!("worker-{id}"),
        "METRICS_PORT",
        redis_url,
        &base,
        env,
    )
    .await;
    Worker {
        metrics_port: port,
        id: id.to_owned(),
        proc,
    }
}

/// Starts a gateway like [`start_gateway`] whose open-file limit is
/// `nofile`: a shell sets `ulimit -n` and execs the binary (setrlimit in
/// `pre_exec` would need unsafe code, which the workspace forbids).
pub async fn start_gateway_with_fd_limit(
    redis_url: &str,
    id: &str,
    nofile: u32,
    env: &[(&str, &str)],
) -> Gateway {
    let base = [("GATEWAY_ID", id), ("RUST_LOG", "info,chat_gateway=debug")];
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\""))
        .arg(bin_path("chat-gateway"));
    let name = format!("gateway-{id}");
    let (port, proc) = spawn_service_cmd(cmd, &name, "PORT", redis_url, &base, env);
    wait_ready(&name, port).await;
    Gateway {
        port,
        id: id.to_owned(),
        proc,
    }
}

/// Spawns `bin` on a free loopback port (given in `port_env`) with a clean
/// environment plus `base` and `env` (later entries win), and waits until its
/// `/readyz` answers 200.
async fn start_service(
    bin: &str,
    name: &str,
    port_env: &str,
    redis_url: &str,
    base: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (u16, Proc) {
    // The port is free when picked but is bound only when the process starts:
    // on a busy machine something else can take it in between. Then the
    // service exits with "Address already in use" and gets another port.
    for _ in 0..5 {
        let (port, mut proc) = spawn_service(bin, name, port_env, redis_url, base, env);
        let addr = format!("127.0.0.1:{port}");
        let end = Instant::now() + DEADLINE;
        loop {
            if http_get(&addr, "/readyz")
                .await
                .is_ok_and(|(s, _)| s == 200)
            {
                return (port, proc);
            }
            if !proc.is_running() {
                break;
            }
            assert!(Instant::now() < end, "timed out waiting for: {name} ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let log = proc.log_text();
        assert!(
            log.contains("Address already in use"),
            "{name} exited before it was ready:\n{log}"
        );
    }
    panic!("{name}: the ports picked for it were taken five times in a row");
}

/// Waits until the service on `port` answers `/readyz` with 200.
async fn wait_ready(name: &str, port: u16) {
    let addr = format!("127.0.0.1:{port}");
    eventually(&format!("{name} ready"), DEADLINE, || {
        let addr = addr.clone();
        async move { (http_get(&addr, "/readyz").await.ok()?.0 == 200).then_some(()) }
    })
    .await;
}

/// Spawns `bin` like [`start_service`] without waiting for anything: for
/// processes expected to refuse their configuration.
pub fn spawn_service(
    bin: &str,
    name: &str,
    port_env: &str,
    redis_url: &str,
    base: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (u16, Proc) {
    spawn_service_cmd(
        Command::new(bin_path(bin)),
        name,
        port_env,
        redis_url,
        base,
        env,
    )
}

/// [`spawn_service`] with the program already in `cmd` (e.g. a shell wrapper).
fn spawn_service_cmd(
    mut cmd: Command,
    name: &str,
    port_env: &str,
    redis_url: &str,
    base: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (u16, Proc) {
    let dir = scratch_dir(name);
    let port = free_port();
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis_url)
        .env(port_env, port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("SHUTDOWN_GRACE_SECS", "5");
    for (k, v) in base.iter().chain(env) {
        cmd.env(k, v);
    }
    (port, Proc::spawn(name, cmd, &dir))
}

#[allow(unused_imports)] // not every test file needs both
pub use chat_tests::{http_get, rss_bytes};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `url` with extra `headers`; the HTTP status and JSON body when the
/// upgrade is refused.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Ws, (u16, Value)> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake within the deadline")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected handshake error: {e}"),
    }
}

/// A chat `message` frame for `room` with a `client_id` (no `username`: the
/// gateway takes the connection's).
pub fn message_frame(room: &str, text: &str, client_id: &str) -> Value {
    serde_json::json!({"type":"message","data":{"room":room,"message":text,"client_id":client_id}})
}

/// Frame types of the ephemeral room events (`PRESENCE_EVENTS`, typing,
/// read receipts): a [`Client`] skips them unless `ephemeral` is set, so
/// tests of other features see the frame sequences they assert on.
pub const EPHEMERAL_TYPES: [&str; 5] = ["join", "leave", "typing", "read", "presence_count"];

/// A WebSocket client speaking the chat protocol.
pub struct Client {
    ws: Ws,
    /// Close frame received, if any: (code, reason).
    pub closed: Option<(u16, String)>,
    /// The client socket's local port, when the harness opened it itself.
    pub local_port: Option<u16>,
    /// Whether ephemeral frames ([`EPHEMERAL_TYPES`]) are returned (else skipped).
    pub ephemeral: bool,
    /// The `data` of the anonymous `session` frame, once received. Session
    /// frames are kept here, not returned, so tests of other features see
    /// the frame sequences they assert on.
    pub session: Option<Value>,
    /// How many `session` frames arrived (the contract: exactly one).
    pub sessions_seen: usize,
    /// Return `session` frames from the readers instead of keeping them aside.
    want_session: bool,
    /// `message` frames that [`Self::next_of_type`] passed over while
    /// waiting for another type: a delivery may overtake the sender's own
    /// ack (they travel different paths), and [`Self::messages`] still owes
    /// it to the test.
    passed_over: std::collections::VecDeque<Value>,
}

impl Client {
    /// A client on the opened WebSocket `ws`.
    fn from_ws(ws: Ws, local_port: Option<u16>) -> Self {
        Self {
            ws,
            closed: None,
            local_port,
            ephemeral: false,
            session: None,
            sessions_seen: 0,
            want_session: false,
            passed_over: Default::default(),
        }
    }

    /// Connects; panics if the upgrade fails.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self::from_ws(ws, None)
    }

    /// Connects and reads the join `history` frame; `None` when the upgrade
    /// is refused or the connection closes first (e.g. while Redis fails over).
    pub async fn try_join(url: &str) -> Option<Self> {
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .ok()?
            .ok()?;
        let mut c = Self::from_ws(ws, None);
        loop {
            let v = c.next_json_within(DEADLINE).await?;
            if v["type"] == "history" {
                return Some(c);
            }
        }
    }

    /// Connects with a tiny TCP receive buffer, so a client that stops reading
    /// backs the server up quickly.
    pub async fn connect_small_buffer(url: &str, port: u16) -> Self {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("tcp connect");
        let local_port = stream.local_addr().ok().map(|a| a.port());
        let (ws, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .expect("ws handshake");
        Self::from_ws(ws, local_port)
    }

    /// Connects and consumes the join `history` frame, returning it.
    pub async fn join(url: &str) -> (Self, Value) {
        let mut c = Self::connect(url).await;
        let h = c.next_of_type("history").await;
        (c, h)
    }

    /// Like [`Self::join`], for a client that also receives ephemeral frames.
    pub async fn join_ephemeral(url: &str) -> (Self, Value) {
        let mut c = Self::connect(url).await;
        c.ephemeral = true;
        let h = c.next_of_type("history").await;
        (c, h)
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(
        &mut self,
        msg: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// Sends a chat message to `room` with a `client_id`, as user `tester`.
    pub async fn say(&mut self, room: &str, text: &str, client_id: &str) {
        let mut v = message_frame(room, text, client_id);
        v["data"]["username"] = "tester".into();
        self.send_text(&v.to_string()).await;
    }

    /// Next JSON frame, or `None` on close / deadline.
    pub async fn next_json_within(&mut self, deadline: Duration) -> Option<Value> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let msg = tokio::time::timeout(left, self.ws.next()).await.ok()??;
            match msg {
                Ok(Message::Text(t)) => {
                    let v: Value =
                        serde_json::from_str(t.as_str()).expect("server sent invalid JSON");
                    let kind = v["type"].as_str().unwrap_or_default();
                    if !self.ephemeral && EPHEMERAL_TYPES.contains(&kind) {
                        continue;
                    }
                    if kind == "session" {
                        self.sessions_seen += 1;
                        self.session = Some(v["data"].clone());
                        if !self.want_session {
                            continue;
                        }
                    }
                    return Some(v);
                }
                Ok(Message::Close(f)) => {
                    self.closed = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Next JSON frame; panics at the deadline.
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(DEADLINE)
            .await
            .expect("expected a frame before the deadline")
    }

    /// Skips frames until one of `kind` arrives; `message` frames skipped
    /// on the way are kept for [`Self::messages`].
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        if kind == "message" {
            if let Some(v) = self.passed_over.pop_front() {
                return v;
            }
        }
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
            if v["type"] == "message" {
                self.passed_over.push_back(v);
            }
        }
    }

    /// The anonymous session of this connection (`data.session` of its
    /// `session` frame), waiting for the frame if it has not come yet.
    pub async fn session_value(&mut self) -> String {
        if self.session.is_none() {
            self.want_session = true;
            self.next_of_type("session").await;
            self.want_session = false;
        }
        self.session.as_ref().unwrap()["session"]
            .as_str()
            .expect("session frame has data.session")
            .to_owned()
    }

    /// The anonymous `user_id` of this connection (from its `session` frame).
    pub async fn anon_user_id(&mut self) -> String {
        self.session_value().await;
        self.session.as_ref().unwrap()["user_id"]
            .as_str()
            .expect("session frame has data.user_id")
            .to_owned()
    }

    /// Sends `frame` and returns the `data` of its `ack`; panics when an
    /// `error` frame answers first.
    pub async fn acked(&mut self, frame: Value) -> Value {
        self.send_text(&frame.to_string()).await;
        loop {
            let v = self.next_json().await;
            match v["type"].as_str() {
                Some("ack") => return v["data"].clone(),
                Some("error") => panic!("{frame} refused: {v}"),
                _ => {}
            }
        }
    }

    /// Collects `n` message frames' `data`, keeping other frames aside.
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if let Some(v) = self.passed_over.pop_front() {
                out.push(v["data"].clone());
                continue;
            }
            let v = self.next_json().await;
            if v["type"] == "message" {
                out.push(v["data"].clone());
            }
        }
        out
    }

    /// Waits for the server to close the connection; returns the close frame.
    pub async fn wait_closed(&mut self, deadline: Duration) -> Option<(u16, String)> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if self.next_json_within(end - Instant::now()).await.is_none() {
                return self.closed.clone();
            }
        }
        panic!("connection not closed before the deadline");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// An HS256 token signed with `secret` with these claims.
pub fn sign_token(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An HS256 token for `sub`, valid for 10 minutes, with `role` if given.
pub fn user_token(secret: &str, sub: &str, role: Option<&str>) -> String {
    let mut claims =
        serde_json::json!({"sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 600});
    if let Some(role) = role {
        claims["role"] = serde_json::json!(role);
    }
    sign_token(secret, &claims)
}

/// Asserts `v` is an RFC 3339 UTC timestamp with milliseconds and `Z`.
pub fn assert_timestamp(v: &Value) {
    let s = v.as_str().expect("timestamp is a string");
    assert!(
        s.ends_with('Z') && s.len() == 24,
        "timestamp {s} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    );
    chrono::DateTime::parse_from_rfc3339(s).expect("timestamp parses as RFC 3339");
}

/// Asserts `v` is a UUID v7.
pub fn assert_uuid_v7(v: &Value) {
    let u = uuid::Uuid::parse_str(v.as_str().expect("id is a string")).expect("id is a UUID");
    assert_eq!(u.get_version_num(), 7, "id {u} is not UUID v7");
}

/// Scrapes `/metrics` at `addr` and returns the value of the sample named
/// exactly `series` (name plus labels as exposed), if present.
pub async fn metric(addr: &str, series: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").await.ok()?;
    parse_exposition(&body).remove(series)
}

/// Waits until the sample `series` at `addr` is `want`.
pub async fn wait_metric(addr: &str, series: &str, want: f64) {
    let what = format!("{series} == {want} at {addr}");
    eventually(&what, DEADLINE, || async {
        (metric(addr, series).await? == want).then_some(())
    })
    .await;
}

/// Parses Prometheus text exposition into `series → value`.
pub fn parse_exposition(body: &str) -> std::collections::HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The kernel's send queue (bytes) of the IPv4 loopback socket with local
/// port `local` connected to remote port `remote`, from `/proc/net/tcp`;
/// `None` when no such socket exists (closed, or reset).
pub fn tcp_send_queue(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        u64::from_str_radix(f[4].split(':').next()?, 16).ok()
    })
}

/// The records of `messages:<room>`, parsed, oldest first.
pub async fn stored_records(redis: &Redis, room: &str) -> Vec<Value> {
    let mut c = redis.conn().await;
    records_in(&mut c, room).await
}

/// The records of `messages:<room>` read over `conn` (a server or a
/// cluster connection), parsed, oldest first.
pub async fn records_in<C>(conn: &mut C, room: &str) -> Vec<Value>
where
    C: redis::aio::ConnectionLike + Send + Sync,
{
    let raw: Vec<String> = redis::AsyncCommands::lrange(conn, format!("messages:{room}"), 0, -1)
        .await
        .unwrap();
    raw.iter()
        .map(|r| serde_json::from_str(r).expect("stored records are JSON"))
        .collect()
}

/// `tests/browser/`, after checking that its npm packages are installed.
pub fn browser_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/browser` first (scripts/test does)"
    );
    dir
}

/// The lines a script started by [`node_script`] prints.
pub type ScriptOutput = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Runs `node <script> <args>` (killed when dropped), its stdout read as lines.
pub fn node_script<A: AsRef<std::ffi::OsStr>>(
    script: &Path,
    args: &[A],
) -> (tokio::process::Child, ScriptOutput) {
    use tokio::io::AsyncBufReadExt;
    let mut node = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let lines = tokio::io::BufReader::new(node.stdout.take().unwrap()).lines();
    (node, lines)
}

/// Reads `lines` up to the one that starts with `prefix` and returns the JSON
/// after it; panics when a line takes longer than `deadline`, when the output
/// ends first, or at a line starting with `FAIL`.
pub async fn next_phase(lines: &mut ScriptOutput, prefix: &str, deadline: Duration) -> Value {
    loop {
        let line = tokio::time::timeout(deadline, lines.next_line())
            .await
            .expect("the browser script answered in time")
            .unwrap()
            .unwrap_or_else(|| panic!("the browser script ended before {prefix}"));
        if let Some(json) = line.strip_prefix(prefix) {
            return serde_json::from_str(json.trim()).unwrap();
        }
        assert!(!line.starts_with("FAIL"), "browser: {line}");
    }
}
