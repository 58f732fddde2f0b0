//! The system under test for one schedule: durable Redis (one server, or 3
//! masters + 3 replicas), 3 workers, 3 gateways and the webhook receiver,
//! all on loopback. On a single Redis every gateway and worker reaches it
//! through a fault proxy of its own, so a network fault hits one process;
//! on a cluster every node has one proxy, shared by all processes.
//!
//! Every process is started here and stopped by PID when the system is
//! dropped ([`chat_tests::procs::Proc`] kills its child on drop).

use std::path::Path;
use std::time::Duration;

use chat_tests::fault_proxy::FaultProxy;
use chat_tests::procs::{free_port, scratch_dir, sibling_bin, wait_http_ok, Proc, ServiceSpec};
use chat_tests::redis_procs::{DurableCluster, DurableRedis};

use crate::webhook::Receiver;

/// Processes of each role.
pub(crate) const GATEWAYS: usize = 3;
/// Workers.
pub(crate) const WORKERS: usize = 3;
/// The API key of the HTTP publisher (`API_KEYS` entry `nemesis:<key>`).
pub(crate) const API_KEY: &str = "nemesis-api-key-0123456789";
/// How long a (re)started service may take to get ready.
const READY: Duration = Duration::from_secs(20);

/// Redis, single or clustered.
#[derive(Debug)]
pub(crate) enum Store {
    /// One durable server.
    Single(DurableRedis),
    /// 3 masters + 3 replicas behind proxies.
    Cluster(DurableCluster),
}

/// A gateway or worker that faults stop and start again.
#[derive(Debug)]
pub(crate) struct Service {
    /// How to start it (same port every time).
    pub(crate) spec: ServiceSpec,
    /// The running process; `None` while a fault keeps it down.
    pub(crate) proc: Option<Proc>,
    /// Its own proxy to Redis (single Redis only).
    pub(crate) proxy: Option<FaultProxy>,
}

impl Service {
    /// Resumes it, or starts it again without waiting until it is ready:
    /// a fault's end must not wait on a process that needs another fault
    /// (Redis down) to end first. [`Self::ensure_up`] waits, at the heal.
    ///
    /// # Errors
    /// When the binary cannot be started.
    pub(crate) fn start_if_down(&mut self) -> std::io::Result<()> {
        if let Some(p) = &mut self.proc {
            p.signal("CONT");
            if p.is_running() {
                return Ok(());
            }
        }
        self.proc = Some(self.spec.spawn()?);
        Ok(())
    }

    /// Resumes it or starts it again, and waits until it is ready (three
    /// starts at most).
    ///
    /// # Errors
    /// When it does not get ready in time (the process is kept anyway).
    pub(crate) async fn ensure_up(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..3 {
            let running = self.proc.as_mut().is_some_and(Proc::is_running);
            match &mut self.proc {
                Some(p) if running => {
                    p.signal("CONT");
                    match wait_http_ok(p, self.spec.port, "/readyz", READY).await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                }
                _ => match self.spec.start(READY).await {
                    Ok(p) => {
                        self.proc = Some(p);
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                },
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last.expect("three attempts"))
    }
}

/// Everything one schedule runs.
#[derive(Debug)]
pub(crate) struct System {
    /// Redis.
    pub(crate) store: Store,
    /// Gateways, `gw0`…
    pub(crate) gateways: Vec<Service>,
    /// Workers, `w0`…
    pub(crate) workers: Vec<Service>,
    /// The webhook receiver.
    pub(crate) webhook: Receiver,
}

impl System {
    /// Starts Redis, the webhook receiver, the workers and the gateways.
    ///
    /// # Errors
    /// When any of them does not start.
    pub(crate) async fn start(base: &Path, cluster: bool) -> anyhow::Result<Self> {
        let dir = base.to_path_buf();
        let store = if cluster {
            Store::Cluster(DurableCluster::start(&dir, 3, 1).await?)
        } else {
            Store::Single(DurableRedis::start(&dir).await?)
        };
        let webhook = Receiver::start().await?;
        let mut common: Vec<(String, String)> = vec![
            ("RUST_LOG".into(), "info".into()),
            ("SHUTDOWN_GRACE_SECS".into(), "5".into()),
            (
                "STREAM_SHARDS".into(),
                if cluster { "16" } else { "4" }.into(),
            ),
        ];
        if cluster {
            common.push(("ACK_AFTER_REPLICAS".into(), "1".into()));
        }
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let mut env = common.clone();
            env.extend(
                [
                    ("WORKER_ID", format!("w{i}")),
                    ("READ_BLOCK_MS", "200".into()),
                    ("LEASE_TTL_MS", "1500".into()),
                    ("JANITOR_INTERVAL_MS", "200".into()),
                    ("GATEWAY_TIMEOUT_MS", "1500".into()),
                    ("HISTORY_LIMIT", "1000000".into()),
                    ("HISTORY_MAX_BYTES", "268435456".into()),
                    ("WEBHOOK_URL", webhook.url.clone()),
                    ("WEBHOOK_SECRET", "nemesis-webhook-secret".into()),
                    ("WEBHOOK_BACKOFF_MAX_MS", "1000".into()),
                    ("WEBHOOK_MAX_ATTEMPTS", "100".into()),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
            workers.push(
                service(
                    &dir,
                    &store,
                    "chat-fanout-worker",
                    format!("w{i}"),
                    "METRICS_PORT",
                    env,
                )
                .await?,
            );
        }
        let mut gateways = Vec::new();
        for i in 0..GATEWAYS {
            let mut env = common.clone();
            env.extend(
                [
                    ("GATEWAY_ID", format!("gw{i}")),
                    ("RATE_LIMIT_PER_SEC", "10000".into()),
                    ("RATE_LIMIT_BURST", "10000".into()),
                    ("API_RATE_LIMIT_PER_SEC", "10000".into()),
                    ("HEARTBEAT_MS", "200".into()),
                    ("API_KEYS", format!("nemesis:{API_KEY}")),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
            gateways
                .push(service(&dir, &store, "chat-gateway", format!("gw{i}"), "PORT", env).await?);
        }
        let mut sys = Self {
            store,
            gateways,
            workers,
            webhook,
        };
        for s in sys.workers.iter_mut().chain(sys.gateways.iter_mut()) {
            s.ensure_up().await?;
        }
        Ok(sys)
    }

    /// The `host:port` of gateway `i`.
    pub(crate) fn gw_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.gateways[i].spec.port)
    }

    /// `LRANGE messages:<room> 0 -1`, parsed (read directly on a single
    /// Redis, through the proxies on a cluster).
    ///
    /// # Errors
    /// When Redis cannot be read.
    pub(crate) async fn stored(&self, room: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let key = format!("messages:{room}");
        let raw: Vec<String> = match &self.store {
            Store::Single(r) => {
                let mut c = redis::Client::open(r.url())?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await?
            }
            Store::Cluster(cl) => {
                let mut c = cl.conn().await?;
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await?
            }
        };
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }

    /// Starts every service that is down and resumes every stopped one
    /// (Redis too), lifts proxy faults, and on a cluster waits until it is ok.
    pub(crate) async fn heal(&mut self) {
        for s in self.all_services_mut() {
            if let Some(p) = &s.proxy {
                p.set_latency(Duration::ZERO);
                p.disarm();
            }
            if let Err(e) = s.ensure_up().await {
                println!("  ! {} did not come back: {e:#}", s.spec.name);
            }
        }
        if let Store::Single(r) = &self.store {
            r.signal("CONT");
        }
        if let Store::Cluster(cl) = &mut self.store {
            for n in &mut cl.nodes {
                n.proxy.set_latency(Duration::ZERO);
                n.proxy.disarm();
                n.signal("CONT");
                if !n.is_up() {
                    let _ = n.restart();
                }
            }
            if let Err(e) = cl.wait_ok(Duration::from_secs(30)).await {
                println!("  ! cluster: {e:#}");
            }
        }
    }

    /// Gateways then workers.
    pub(crate) fn all_services_mut(&mut self) -> impl Iterator<Item = &mut Service> {
        self.gateways.iter_mut().chain(self.workers.iter_mut())
    }
}

/// A service's spec, with its own proxy to Redis on a single server.
async fn service(
    dir: &Path,
    store: &Store,
    bin: &str,
    name: String,
    port_env: &'static str,
    mut env: Vec<(String, String)>,
) -> anyhow::Result<Service> {
    let (url, proxy) = match store {
        Store::Single(r) => {
            let proxy = FaultProxy::start(format!("127.0.0.1:{}", r.port).parse()?).await?;
            (format!("redis://{}", proxy.addr()), Some(proxy))
        }
        Store::Cluster(c) => (c.url(), None),
    };
    env.push(("REDIS_URL".into(), url));
    let spec = ServiceSpec {
        bin: sibling_bin(bin),
        dir: scratch_dir(dir, &name),
        name,
        port_env,
        port: free_port(),
        env,
    };
    Ok(Service {
        spec,
        proc: None,
        proxy,
    })
}
