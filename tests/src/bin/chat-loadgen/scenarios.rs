//! The scenarios: `fanout`, `burst`, `conns` and `persist`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use chat_shared::redis::Conn;
use chat_tests::{http_get, rss_bytes};

use crate::client;
use crate::cpu;
use crate::roles::{self, Mix, Pace, PubResult, PublisherSpec};
use crate::stats::{Report, SubStats};

/// Where clients connect and from which source addresses.
#[derive(Debug, Clone)]
pub(crate) struct Targets {
    pub(crate) urls: Vec<String>,
    pub(crate) sources: Vec<IpAddr>,
    /// Processes whose CPU time the report shows.
    pub(crate) cpu: Vec<cpu::Group>,
}

impl Targets {
    /// The `i`-th client's gateway URL (round-robin) for `room`, and source.
    pub(crate) fn pick(&self, i: usize, room: &str, extra: &str) -> (String, Option<IpAddr>) {
        let base = &self.urls[i % self.urls.len()];
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}room={room}{extra}");
        (url, Some(self.sources[i % self.sources.len()]))
    }
}

/// The shape of a `conns` run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnsShape {
    /// Connections to open.
    pub(crate) count: usize,
    /// Connection attempts in flight.
    pub(crate) parallel: usize,
    /// Rooms they are spread over (`idle-0` …).
    pub(crate) rooms: usize,
    /// No `username`: every connection is an anonymous user of its own, as
    /// an independent client opens them.
    pub(crate) anonymous: bool,
}

/// A room load: `subs` subscribers and `pubs` publishers per room.
#[derive(Debug, Clone)]
pub(crate) struct RoomLoad {
    pub(crate) name: String,
    pub(crate) rooms: usize,
    pub(crate) subs: usize,
    pub(crate) pubs: usize,
    pub(crate) pace: Pace,
    pub(crate) duration: Duration,
    pub(crate) pad: usize,
    /// Typing frames and reactions sent besides the messages.
    pub(crate) mix: Mix,
    /// Of each room's subscribers, how many receive over `/sse` (the rest
    /// over WebSockets).
    pub(crate) sse_subs: usize,
}

/// Runs subscribers and publishers over rooms and accounts for every delivery.
pub(crate) async fn rooms(t: &Targets, load: RoomLoad) -> anyhow::Result<Report> {
    let prefix = format!("{}-{}", load.name, std::process::id());
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let mut targets = Vec::new();
    let mut subs = Vec::new();
    let mut idx = 0;
    let drain = load.duration + Duration::from_secs(30);
    for r in 0..load.rooms {
        let room = format!("{prefix}-{r}");
        let (tx, rx) = watch::channel(None);
        targets.push(tx);
        for s in 0..load.subs {
            let (url, src) = t.pick(idx, &room, "");
            idx += 1;
            let (ready, target) = (ready_tx.clone(), rx.clone());
            let task = if s < load.sse_subs {
                tokio::spawn(crate::sse_sub::subscriber(url, src, ready, target, drain))
            } else {
                tokio::spawn(roles::subscriber(url, src, ready, target, drain))
            };
            subs.push((r, task));
        }
    }
    drop(ready_tx);
    for _ in 0..subs.len() {
        ready_rx
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("a subscriber failed to join"))?;
    }
    let (start_tx, start_rx) = watch::channel(false);
    let mut pubs = Vec::new();
    for r in 0..load.rooms {
        let room = format!("{prefix}-{r}");
        for p in 0..load.pubs {
            let (url, src) = t.pick(idx, &room, "");
            idx += 1;
            let id = (r * load.pubs + p) as u32;
            pubs.push((
                r,
                tokio::spawn(roles::publisher(
                    PublisherSpec {
                        url,
                        room: room.clone(),
                        id,
                        pace: load.pace,
                        duration: load.duration,
                        pad: load.pad,
                        source: src,
                        mix: load.mix,
                        phase: id as f64 / (load.rooms * load.pubs) as f64,
                    },
                    start_rx.clone(),
                )),
            ));
        }
    }
    // Give publishers a moment to join, then start them together.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_us = client::now_us();
    let started = Instant::now();
    let cpu_before = cpu::snapshot(&t.cpu);
    start_tx.send(true)?;
    // Messages acked per room: what each room's subscribers must receive.
    let mut acked_per_room: HashMap<usize, u64> = HashMap::new();
    let mut total = PubResult::default();
    for (r, h) in pubs {
        let res = h.await??;
        *acked_per_room.entry(r).or_default() += res.acked;
        total.add(res);
    }
    let send_secs = started.elapsed().as_secs_f64();
    let mut expected = 0;
    for (r, tx) in targets.iter().enumerate() {
        let acked = acked_per_room.get(&r).copied().unwrap_or(0);
        expected += acked * load.subs as u64;
        let _ = tx.send(Some(acked));
    }
    let mut stats: Vec<SubStats> = Vec::new();
    for (_, h) in subs {
        stats.push(h.await??);
    }
    let mut report = Report::from_subs(&load.name, &stats, expected, start_us);
    cpu::report(
        &t.cpu,
        &cpu_before,
        total.acked,
        report.received_deliveries,
        &mut report.extra,
    );
    report.sent = total.sent;
    report.acked = total.acked;
    report.refused = total.refused;
    report.add_ack_latency(&total.ack_us, total.acks_out_of_order);
    report
        .extra
        .insert("publish_seconds".into(), format!("{send_secs:.2}").into());
    report.extra.insert(
        "messages_per_s".into(),
        format!("{:.0}", total.acked as f64 / send_secs.max(1e-9)).into(),
    );
    if load.mix.typing_every > 0 || load.mix.react_every > 0 {
        report
            .extra
            .insert("typing_sent".into(), total.typing.into());
        report
            .extra
            .insert("reactions_sent".into(), total.reactions.into());
        report
            .extra
            .insert("reactions_answered".into(), total.reactions_acked.into());
    }
    report.extra.insert(
        "shape".into(),
        format!(
            "{} rooms x {} subs x {} pubs",
            load.rooms, load.subs, load.pubs
        )
        .into(),
    );
    Ok(report)
}

/// Opens `count` idle connections, holds them for `hold`, and reports the
/// connect rate and, given gateway PIDs, their resident memory per connection.
/// The clients are spread over 100 rooms and each names itself
/// (`username=idle-user-N`), the shape of a real idle population; with a
/// `token` in the URL the name comes from the token instead (a query name
/// that differs from it is refused).
pub(crate) async fn conns(
    t: &Targets,
    shape: ConnsShape,
    hold: Duration,
    gateway_pids: &[u32],
) -> anyhow::Result<Report> {
    let ConnsShape {
        count,
        parallel,
        rooms,
        anonymous,
    } = shape;
    let rss_before: u64 = gateway_pids.iter().map(|p| rss_bytes(*p)).sum();
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let (done_tx, _) = watch::channel(false);
    let mut handles = Vec::with_capacity(count);
    let (ok_tx, mut ok_rx) = mpsc::channel::<bool>(count.max(1));
    for i in 0..count {
        let named = if anonymous || t.urls[i % t.urls.len()].contains("token=") {
            String::new()
        } else {
            format!("&username=idle-user-{i}")
        };
        let (url, src) = t.pick(i, &format!("idle-{}", i % rooms.max(1)), &named);
        let permit = sem.clone().acquire_owned().await?;
        let ok_tx = ok_tx.clone();
        let mut done = done_tx.subscribe();
        handles.push(tokio::spawn(async move {
            let ws = client::connect(&url, src).await;
            drop(permit);
            let Ok(mut ws) = ws else {
                let _ = ok_tx.send(false).await;
                return;
            };
            let _ = ok_tx.send(true).await;
            // Keep reading so pings are answered, until told to stop.
            loop {
                tokio::select! {
                    m = ws.next() => if m.is_none() { break },
                    _ = done.changed() => break,
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(ok_tx);
    let (ok, failed) = tally_connects(&mut ok_rx, count).await;
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the gateways settle (registrations, history frames) before measuring.
    tokio::time::sleep(hold).await;
    let rss_after: u64 = gateway_pids.iter().map(|p| rss_bytes(*p)).sum();
    let _ = done_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    let mut r = Report {
        scenario: "conns".into(),
        ..Default::default()
    };
    r.extra.insert("connected".into(), ok.into());
    r.extra.insert("failed".into(), failed.into());
    r.extra.insert(
        "connect_seconds".into(),
        format!("{connect_secs:.2}").into(),
    );
    r.extra.insert(
        "connects_per_s".into(),
        format!("{:.0}", ok as f64 / connect_secs).into(),
    );
    if !gateway_pids.is_empty() {
        let per = rss_after.saturating_sub(rss_before) as f64 / ok.max(1) as f64;
        r.extra.insert(
            "gateway_rss_before_mib".into(),
            format!("{:.1}", rss_before as f64 / 1048576.0).into(),
        );
        r.extra.insert(
            "gateway_rss_after_mib".into(),
            format!("{:.1}", rss_after as f64 / 1048576.0).into(),
        );
        r.extra.insert(
            "gateway_rss_per_conn_kib".into(),
            format!("{:.2}", per / 1024.0).into(),
        );
        r.extra
            .insert("bytes_per_conn".into(), format!("{per:.0}").into());
    }
    Ok(r)
}

/// Appends `count` stamped entries straight into the shard streams (as
/// gateways would), then times how long the worker(s) take to persist and
/// publish them all, from the worker's own counter.
pub(crate) async fn persist(
    redis_url: &str,
    worker_metrics: &str,
    count: u64,
    rooms: usize,
    shards: u32,
    t: &Targets,
) -> anyhow::Result<Report> {
    use chat_shared::envelope::{StreamEntry, STREAM_FIELD, VERSION};
    use chat_shared::ids::RoomId;
    use chat_shared::keys;

    let prefix = format!("persist-{}", std::process::id());
    // One subscriber per room, so the worker really publishes.
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let (_tx, rx) = watch::channel(None);
    let mut subs = Vec::new();
    for r in 0..rooms {
        let (url, src) = t.pick(r, &format!("{prefix}-{r}"), "");
        subs.push(tokio::spawn(roles::subscriber(
            url,
            src,
            ready_tx.clone(),
            rx.clone(),
            Duration::from_secs(120),
        )));
    }
    drop(ready_tx);
    for _ in 0..rooms {
        ready_rx
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("a subscriber failed to join"))?;
    }
    let mut conn = append_connection(redis_url, shards).await?;
    let before = worker_counter(worker_metrics).await?;
    let started = Instant::now();
    let cpu_before = cpu::snapshot(&t.cpu);
    let mut n = 0u64;
    while n < count {
        // One run of XADDs per shard, so that on a cluster each run goes to
        // one node in one round trip; a room's entries keep their order.
        let mut by_shard: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for _ in 0..1000.min(count - n) {
            let room = RoomId::parse(&format!("{prefix}-{}", n as usize % rooms))?;
            let entry = StreamEntry {
                v: VERSION,
                id: uuid::Uuid::now_v7().to_string(),
                room: room.to_string(),
                username: "loadgen".into(),
                message: client::payload(0, n, client::now_us(), 0),
                timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                stamped_us: client::now_us(),
                user_id: None,
                ..Default::default()
            };
            by_shard
                .entry(keys::shard_of(&room, shards))
                .or_default()
                .push(entry.encode());
            n += 1;
        }
        let mut pipe = redis::pipe();
        for (shard, entries) in by_shard {
            for entry in entries {
                pipe.cmd("XADD")
                    .arg(keys::stream(shard))
                    .arg("*")
                    .arg(STREAM_FIELD)
                    .arg(entry)
                    .ignore();
            }
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let append_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = worker_counter(worker_metrics).await? - before;
        if done >= count as f64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "worker persisted only {done} of {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    for s in subs {
        s.abort();
    }
    let mut r = Report {
        scenario: "persist".into(),
        sent: count,
        acked: count,
        duration_s: secs,
        ..Default::default()
    };
    r.extra
        .insert("append_seconds".into(), format!("{append_secs:.2}").into());
    r.extra.insert(
        "persisted_per_s".into(),
        format!("{:.0}", count as f64 / secs).into(),
    );
    r.extra.insert("rooms".into(), rooms.into());
    cpu::report(&t.cpu, &cpu_before, count, count, &mut r.extra);
    Ok(r)
}

/// A connection for appending to the shard streams: to a single Redis, or to
/// a cluster (`redis+cluster://…`), where the shard tags are then spread over
/// the slots exactly as the services spread them.
async fn append_connection(redis_url: &str, shards: u32) -> anyhow::Result<Conn> {
    Ok(match chat_shared::config::cluster_nodes(redis_url, false) {
        Some(nodes) => {
            chat_shared::cluster::spread_shard_tags(shards);
            let client = redis::cluster::ClusterClient::new(nodes)?;
            Conn::Cluster(client.get_async_connection().await?)
        }
        None => {
            let url = chat_shared::config::normalize_redis_url(redis_url);
            Conn::Plain(
                redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await?,
            )
        }
    })
}

/// Sum of `chat_worker_messages_persisted_total` over comma-separated addresses.
async fn worker_counter(addrs: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for addr in addrs.split(',') {
        let (_, body) = http_get(addr, "/metrics").await?;
        total += body
            .lines()
            .find_map(|l| {
                l.strip_prefix("chat_worker_messages_persisted_total ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
    }
    Ok(total)
}

/// Counts the connection outcomes (`true`: connected) sent on `rx` until
/// all `count` attempts have reported or every sender is gone; returns
/// (connected, failed).
pub(crate) async fn tally_connects(rx: &mut mpsc::Receiver<bool>, count: usize) -> (u64, u64) {
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(r) = rx.recv().await {
        if r {
            ok += 1
        } else {
            failed += 1
        }
        if ok + failed == count as u64 {
            break;
        }
    }
    (ok, failed)
}
