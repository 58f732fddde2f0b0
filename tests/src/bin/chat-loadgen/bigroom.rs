//! `bigroom`: one large room spread over several client processes (issue 26).
//!
//! `bigroom members` connects its share of anonymous members (no `username`)
//! into ONE room, prints a `READY {json}` line with its connect rate once
//! every member has its `history` frame, then waits for the publisher's
//! messages and reports per-delivery latency (from the send time carried in
//! the text; publisher and members share this machine's clock), loss,
//! duplicates and order by `seq`. `bigroom publish` joins the same room and
//! sends M messages a fixed interval apart. `scripts/bench-bigroom` runs two
//! or more member processes (at most 20,000 descriptors each here) and one
//! publisher against two or more gateways.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Incoming};
use crate::stats::Report;
use crate::Common;

/// The two roles of a large-room run.
#[derive(Debug, Subcommand)]
pub(crate) enum Role {
    /// Connects COUNT anonymous members into ROOM, prints `READY {json}`,
    /// then waits for MESSAGES messages and reports their delivery.
    Members {
        #[command(flatten)]
        common: Common,
        /// The room every member joins.
        #[arg(long, default_value = "bigroom")]
        room: String,
        /// Members this process connects.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Joins in flight (connect, upgrade, `history` frame).
        #[arg(long, default_value_t = 256)]
        parallel: usize,
        /// Messages each member must receive.
        #[arg(long, default_value_t = 5)]
        messages: u64,
        /// Seconds to wait for the messages once every member is in.
        #[arg(long, default_value_t = 180)]
        wait: u64,
    },
    /// Joins ROOM and sends MESSAGES messages INTERVAL_MS apart, each
    /// carrying its send time.
    Publish {
        #[command(flatten)]
        common: Common,
        /// The room to send to (the members' room).
        #[arg(long, default_value = "bigroom")]
        room: String,
        /// Messages to send.
        #[arg(long, default_value_t = 5)]
        messages: u64,
        /// Milliseconds between two sends.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

/// Runs one role and returns its report.
pub(crate) async fn run(role: Role) -> anyhow::Result<Report> {
    match role {
        Role::Members {
            common,
            room,
            count,
            parallel,
            messages,
            wait,
        } => {
            let t = crate::targets(&common)?;
            let shape = Shape {
                room,
                count,
                parallel,
                messages,
                wait: Duration::from_secs(wait),
            };
            members(&t.urls, &t.sources, shape).await
        }
        Role::Publish {
            common,
            room,
            messages,
            interval_ms,
        } => {
            let t = crate::targets(&common)?;
            let url = member_url(&t.urls[0], &room);
            publish(&url, t.sources[0], &room, messages, interval_ms).await
        }
    }
}

/// What a member process does.
struct Shape {
    room: String,
    count: usize,
    parallel: usize,
    messages: u64,
    wait: Duration,
}

/// `base` with the room in the query (no `username`: an anonymous user).
fn member_url(base: &str, room: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}room={room}")
}

/// What one member saw of the publisher's messages.
#[derive(Debug, Default)]
struct Seen {
    /// Latency of each message by its number (`None`: not received).
    latency_us: Vec<Option<u64>>,
    received: u64,
    duplicated: u64,
    /// Frames older than one already received.
    out_of_order: u64,
    /// Frames whose room `seq` did not rise.
    seq_regressions: u64,
}

impl Seen {
    fn new(messages: u64) -> Self {
        Self {
            latency_us: vec![None; messages as usize],
            ..Default::default()
        }
    }

    /// Records one delivery of message `n` (stamped `sent_us`, room `seq`).
    fn record(&mut self, n: u64, sent_us: i64, seq: u64, last_seq: &mut u64, now_us: i64) {
        self.received += 1;
        if seq <= *last_seq {
            self.seq_regressions += 1;
        }
        *last_seq = (*last_seq).max(seq);
        let i = n as usize;
        if i >= self.latency_us.len() {
            return;
        }
        if self.latency_us[i].is_some() {
            self.duplicated += 1;
            return;
        }
        if self.latency_us[i + 1..].iter().any(Option::is_some) {
            self.out_of_order += 1;
        }
        self.latency_us[i] = Some((now_us - sent_us).max(1) as u64);
    }

    fn complete(&self) -> bool {
        self.latency_us.iter().all(Option::is_some)
    }
}

/// Reads frames until the join's `history` frame.
async fn joined(ws: &mut client::Ws) -> anyhow::Result<()> {
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            let f: Incoming<'_> = serde_json::from_str(t.as_str())?;
            if f.kind == "history" {
                return Ok(());
            }
        }
    }
    anyhow::bail!("closed before the history frame")
}

/// Channels a member talks to the process over.
struct MemberLinks {
    /// Joined (or not), once.
    joined: mpsc::Sender<bool>,
    /// What it saw, once it has every message or the wait is over.
    seen: mpsc::Sender<Seen>,
    /// Set when every member has reported: time to close.
    done: watch::Receiver<bool>,
    /// Set when the wait for messages is over.
    give_up: watch::Receiver<bool>,
}

/// One member: joins, then records the publisher's messages; keeps its
/// socket open (answering pings) until every member has reported.
async fn member(
    url: String,
    src: IpAddr,
    join_slot: Arc<Semaphore>,
    messages: u64,
    l: MemberLinks,
) {
    let MemberLinks {
        joined: joined_tx,
        seen: seen_tx,
        mut done,
        mut give_up,
    } = l;
    let permit = join_slot.acquire_owned().await;
    let ws = match client::connect(&url, Some(src)).await {
        Ok(mut ws) => joined(&mut ws).await.map(|()| ws),
        Err(e) => Err(e),
    };
    drop(permit);
    let Ok(mut ws) = ws else {
        let _ = joined_tx.send(false).await;
        return;
    };
    let _ = joined_tx.send(true).await;
    let mut seen = Seen::new(messages);
    let mut last_seq = 0;
    let mut reported = false;
    loop {
        if !reported && (seen.complete() || *give_up.borrow()) {
            let _ = seen_tx.send(std::mem::take(&mut seen)).await;
            reported = true;
        }
        tokio::select! {
            msg = ws.next() => {
                let t = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => break,
                };
                let now = client::now_us();
                let Ok(f) = serde_json::from_str::<Incoming<'_>>(t.as_str()) else { continue };
                let Some(data) = f.data.filter(|_| f.kind == "message") else { continue };
                if let Some((_, n, sent)) = data.message.as_deref().and_then(client::parse_payload) {
                    seen.record(n, sent, data.seq.unwrap_or(0), &mut last_seq, now);
                }
            }
            r = give_up.changed(), if !*give_up.borrow() => if r.is_err() { break },
            r = done.changed() => if r.is_err() || *done.borrow() { break },
        }
    }
    if !reported {
        let _ = seen_tx.send(seen).await;
    }
    let _ = ws.close(None).await;
}

/// Connects every member, prints `READY`, collects what they saw, reports.
async fn members(urls: &[String], sources: &[IpAddr], s: Shape) -> anyhow::Result<Report> {
    let started = Instant::now();
    let slots = Arc::new(Semaphore::new(s.parallel.max(1)));
    let (joined_tx, mut joined_rx) = mpsc::channel(s.count.max(1));
    let (seen_tx, mut seen_rx) = mpsc::channel(s.count.max(1));
    let (done_tx, done_rx) = watch::channel(false);
    let (give_up_tx, give_up_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(s.count);
    for i in 0..s.count {
        let links = MemberLinks {
            joined: joined_tx.clone(),
            seen: seen_tx.clone(),
            done: done_rx.clone(),
            give_up: give_up_rx.clone(),
        };
        let url = member_url(&urls[i % urls.len()], &s.room);
        let src = sources[i % sources.len()];
        handles.push(tokio::spawn(member(
            url,
            src,
            slots.clone(),
            s.messages,
            links,
        )));
    }
    drop((joined_tx, seen_tx));
    let (mut ok, mut failed) = (0u64, 0u64);
    while ok + failed < s.count as u64 {
        match joined_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let ready = serde_json::json!({
        "connected": ok, "failed": failed,
        "connect_seconds": format!("{connect_secs:.2}"),
        "connects_per_s": format!("{:.0}", ok as f64 / connect_secs.max(1e-9)),
    });
    println!("READY {ready}");
    std::io::stdout().flush()?;
    // Every joined member reports once: all messages, or what it has when the wait ends.
    let give_up = tokio::spawn(async move {
        tokio::time::sleep(s.wait).await;
        let _ = give_up_tx.send(true);
        give_up_tx
    });
    let mut all = Vec::with_capacity(ok as usize);
    while (all.len() as u64) < ok {
        match seen_rx.recv().await {
            Some(seen) => all.push(seen),
            None => break,
        }
    }
    give_up.abort();
    // The script measures the gateways' CPU up to this line; the close of
    // every member comes after it.
    println!("RECEIVED {}", all.len());
    std::io::stdout().flush()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = done_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    let mut r = summarize(&all, s.messages)?;
    for (k, v) in ready.as_object().into_iter().flatten() {
        r.extra.insert(k.clone(), v.clone());
    }
    Ok(r)
}

/// Merges the members' views into one report: loss, order, latency
/// percentiles, and per message the time until the last member had it.
fn summarize(all: &[Seen], messages: u64) -> anyhow::Result<Report> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut r = Report {
        scenario: "bigroom-members".into(),
        expected_deliveries: all.len() as u64 * messages,
        ..Default::default()
    };
    let mut last_per_message = vec![0u64; messages as usize];
    let mut unique = 0;
    for s in all {
        r.received_deliveries += s.received;
        r.duplicated += s.duplicated;
        r.out_of_order += s.out_of_order;
        r.seq_regressions += s.seq_regressions;
        for (i, l) in s.latency_us.iter().enumerate() {
            if let Some(us) = *l {
                unique += 1;
                h.record(us)?;
                last_per_message[i] = last_per_message[i].max(us);
            }
        }
    }
    r.lost = r.expected_deliveries.saturating_sub(unique);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    (r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms) = (ms(0.5), ms(0.9), ms(0.99), ms(0.999));
    r.max_ms = h.max() as f64 / 1000.0;
    let last: Vec<String> = last_per_message
        .iter()
        .map(|us| format!("{:.1}", *us as f64 / 1000.0))
        .collect();
    r.extra
        .insert("last_member_ms_per_message".into(), last.join(" ").into());
    Ok(r)
}

/// Joins the room and sends `messages` stamped messages `interval_ms`
/// apart, then waits (at most 30 s) for their acks.
async fn publish(
    url: &str,
    src: IpAddr,
    room: &str,
    messages: u64,
    interval_ms: u64,
) -> anyhow::Result<Report> {
    let mut ws = client::connect(url, Some(src)).await?;
    joined(&mut ws).await?;
    let mut r = Report {
        scenario: "bigroom-publish".into(),
        ..Default::default()
    };
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    let mut drain_end = None;
    while r.acked + r.refused < messages {
        tokio::select! {
            _ = tick.tick(), if r.sent < messages => {
                let text = client::payload(0, r.sent, client::now_us(), 0);
                ws.send(Message::Text(client::message_frame(room, &text, r.sent).into())).await?;
                r.sent += 1;
                if r.sent == messages {
                    drain_end = Some(tokio::time::Instant::now() + Duration::from_secs(30));
                }
            }
            msg = ws.next() => {
                let Some(msg) = msg else { break };
                let Message::Text(t) = msg? else { continue };
                let f: Incoming<'_> = serde_json::from_str(t.as_str())?;
                match f.kind.as_ref() {
                    "ack" => r.acked += 1,
                    "error" => r.refused += 1,
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(drain_end.unwrap_or_else(far_future)), if drain_end.is_some() => break,
        }
    }
    let _ = ws.close(None).await;
    Ok(r)
}

/// A deadline that never comes (a disabled `select!` arm still needs one).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn counts_loss_duplicates_and_order() {
        let mut s = Seen::new(3);
        let mut last_seq = 0;
        s.record(0, 0, 10, &mut last_seq, 1_000);
        s.record(2, 0, 12, &mut last_seq, 2_000);
        s.record(1, 0, 11, &mut last_seq, 3_000);
        s.record(1, 0, 11, &mut last_seq, 3_000);
        assert_eq!(
            (s.received, s.duplicated, s.out_of_order, s.seq_regressions),
            (4, 1, 1, 2)
        );
        assert!(s.complete());
        let r = super::summarize(&[s, Seen::new(3)], 3).unwrap();
        assert_eq!((r.expected_deliveries, r.lost), (6, 3));
        // The histogram keeps 3 significant digits.
        assert!((r.max_ms - 3.0).abs() < 0.01, "{}", r.max_ms);
    }
}
