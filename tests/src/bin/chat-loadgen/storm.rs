//! `conns --retry`: idle connections opened the way a well-behaved client
//! does in a connect storm, and watched while they are held.
//!
//! A connection counts as connected only once it is registered (its first
//! frame, the join history or the anonymous session, arrived). A refusal
//! with a retry hint (HTTP 503 with `Retry-After`, or close 1013
//! `overloaded: retry after N s`) is retried after the hint plus full
//! jitter over as wide a window, as the JS client does; other failed
//! attempts after a short jittered backoff. While held, every connection
//! that closes is counted as dropped after connect: the figure the
//! admission control (issue 26) keeps at 0.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_tests::rss_bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::client;
use crate::scenarios::{ConnsShape, Targets};
use crate::stats::Report;

/// Longest a client keeps trying before it gives up.
const GIVE_UP: Duration = Duration::from_secs(180);
/// Longest wait for the first frame after the upgrade (registration).
const FIRST_FRAME: Duration = Duration::from_secs(30);

/// Counts of what the attempts ended with.
#[derive(Default)]
struct Tally {
    refused_503: AtomicU64,
    closed_1013: AtomicU64,
    closed_before_registered: AtomicU64,
    attempt_errors: AtomicU64,
    dropped_after_connect: AtomicU64,
}

/// How one attempt ended.
enum Outcome {
    Registered(Box<client::Ws>),
    /// Refused with a hint, in seconds.
    Hinted(u64),
    /// Failed otherwise.
    Failed,
}

/// The seconds in `overloaded: retry after N s`.
fn close_hint(reason: &str) -> Option<u64> {
    let rest = reason.split("retry after ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// One attempt: connect, upgrade, wait for the first frame.
async fn attempt(url: &str, src: Option<IpAddr>, tally: &Tally) -> Outcome {
    let mut ws = match client::connect_idle(url, src).await {
        Ok(ws) => ws,
        Err(e) => {
            let refused = e
                .downcast_ref::<tungstenite::Error>()
                .and_then(|e| match e {
                    tungstenite::Error::Http(resp) if resp.status().as_u16() == 503 => Some(
                        resp.headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(1),
                    ),
                    _ => None,
                });
            return match refused {
                Some(secs) => {
                    tally.refused_503.fetch_add(1, Ordering::Relaxed);
                    Outcome::Hinted(secs)
                }
                None => {
                    tally.attempt_errors.fetch_add(1, Ordering::Relaxed);
                    Outcome::Failed
                }
            };
        }
    };
    loop {
        match tokio::time::timeout(FIRST_FRAME, ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => return Outcome::Registered(Box::new(ws)),
            Ok(Some(Ok(Message::Close(Some(f))))) if u16::from(f.code) == 1013 => {
                if let Some(secs) = close_hint(&f.reason) {
                    tally.closed_1013.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Hinted(secs);
                }
                tally
                    .closed_before_registered
                    .fetch_add(1, Ordering::Relaxed);
                return Outcome::Failed;
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            _ => {
                tally
                    .closed_before_registered
                    .fetch_add(1, Ordering::Relaxed);
                return Outcome::Failed;
            }
        }
    }
}

/// Full jitter: a random duration in `[0, max)`.
fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

/// Connects until registered (or [`GIVE_UP`]), holding a `parallel` permit
/// only during attempts.
async fn connect_retrying(
    url: &str,
    src: Option<IpAddr>,
    sem: &Semaphore,
    tally: &Tally,
) -> Option<client::Ws> {
    let started = Instant::now();
    let mut failures = 0u32;
    while started.elapsed() < GIVE_UP {
        let outcome = {
            let _permit = sem.acquire().await.ok()?;
            attempt(url, src, tally).await
        };
        let pause = match outcome {
            Outcome::Registered(ws) => return Some(*ws),
            Outcome::Hinted(secs) => {
                let hint = Duration::from_secs(secs);
                hint + jitter(hint)
            }
            Outcome::Failed => {
                failures += 1;
                jitter(Duration::from_millis(100 << failures.min(5)))
            }
        };
        tokio::time::sleep(pause).await;
    }
    None
}

/// Opens `shape.count` idle connections with retries, holds them for
/// `hold`, and reports how many were dropped while held.
pub(crate) async fn conns_retrying(
    t: &Targets,
    shape: ConnsShape,
    room_prefix: &str,
    hold: Duration,
    gateway_pids: &[u32],
) -> anyhow::Result<Report> {
    let count = shape.count;
    let tally = Arc::new(Tally::default());
    let sem = Arc::new(Semaphore::new(shape.parallel.max(1)));
    let (done_tx, _) = watch::channel(false);
    let (ok_tx, mut ok_rx) = mpsc::channel::<bool>(count.max(1));
    let closes = Arc::new(std::sync::Mutex::new(BTreeMap::<u16, u64>::new()));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let named = if shape.anonymous {
            String::new()
        } else {
            format!("&username=idle-user-{i}")
        };
        let room = format!("{room_prefix}-{}", i % shape.rooms.max(1));
        let (url, src) = t.pick(i, &room, &named);
        let (tally, sem, ok_tx, closes) =
            (tally.clone(), sem.clone(), ok_tx.clone(), closes.clone());
        let mut done = done_tx.subscribe();
        handles.push(tokio::spawn(async move {
            let Some(mut ws) = connect_retrying(&url, src, &sem, &tally).await else {
                let _ = ok_tx.send(false).await;
                return;
            };
            let _ = ok_tx.send(true).await;
            // Keep reading so pings are answered; a close before `done` is a drop.
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Close(f))) => {
                            tally.dropped_after_connect.fetch_add(1, Ordering::Relaxed);
                            let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                            *closes.lock().unwrap().entry(code).or_default() += 1;
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => {
                            tally.dropped_after_connect.fetch_add(1, Ordering::Relaxed);
                            *closes.lock().unwrap().entry(1006).or_default() += 1;
                            return;
                        }
                    },
                    _ = done.changed() => break,
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    drop(ok_tx);
    let (ok, failed) = crate::scenarios::tally_connects(&mut ok_rx, count).await;
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!("conns --retry: {ok} registered, {failed} gave up in {connect_secs:.1} s; holding");
    tokio::time::sleep(hold).await;
    let own_rss = rss_bytes(std::process::id());
    let gateway_rss: u64 = gateway_pids.iter().map(|p| rss_bytes(*p)).sum();
    let dropped = tally.dropped_after_connect.load(Ordering::Relaxed);
    let _ = done_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    let mut r = Report {
        scenario: "conns".into(),
        ..Default::default()
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let extra = &mut r.extra;
    extra.insert("connected".into(), ok.into());
    extra.insert("failed".into(), failed.into());
    extra.insert("dropped_after_connect".into(), dropped.into());
    let codes: BTreeMap<String, u64> = closes
        .lock()
        .unwrap()
        .iter()
        .map(|(c, n)| (c.to_string(), *n))
        .collect();
    extra.insert("dropped_close_codes".into(), serde_json::to_value(codes)?);
    extra.insert("refused_503".into(), load(&tally.refused_503).into());
    extra.insert("closed_1013".into(), load(&tally.closed_1013).into());
    extra.insert(
        "closed_before_registered".into(),
        load(&tally.closed_before_registered).into(),
    );
    extra.insert("attempt_errors".into(), load(&tally.attempt_errors).into());
    extra.insert(
        "connect_seconds".into(),
        format!("{connect_secs:.2}").into(),
    );
    extra.insert(
        "connects_per_s".into(),
        format!("{:.0}", ok as f64 / connect_secs).into(),
    );
    extra.insert(
        "loadgen_rss_mib".into(),
        format!("{:.1}", own_rss as f64 / 1048576.0).into(),
    );
    if !gateway_pids.is_empty() {
        extra.insert(
            "gateway_rss_mib".into(),
            format!("{:.1}", gateway_rss as f64 / 1048576.0).into(),
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_close_hint_is_read() {
        assert_eq!(super::close_hint("overloaded: retry after 2 s"), Some(2));
        assert_eq!(
            super::close_hint("slow consumer: outbound queue full"),
            None
        );
    }
}
