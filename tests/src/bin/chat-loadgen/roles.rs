//! The two client roles: a subscriber that checks every delivery (on a
//! WebSocket or, through [`Frames`], on `/sse`), and a publisher that sends
//! at a fixed rate or as fast as a window of unacked messages allows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::client::{self, Incoming};
use crate::stats::SubStats;

/// How a publisher paces itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// Messages per second.
    Rate(f64),
    /// At most this many unacked messages in flight.
    Window(usize),
}

/// What a publisher did.
#[derive(Debug, Default, Clone)]
pub(crate) struct PubResult {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) refused: u64,
    /// Send-to-ack time of every acked message, in microseconds.
    pub(crate) ack_us: Vec<u64>,
    /// Acks that arrived after the ack of a later message of the same
    /// connection (acks are owed in send order).
    pub(crate) acks_out_of_order: u64,
    /// Typing frames sent (never answered).
    pub(crate) typing: u64,
    /// Reactions sent and acked.
    pub(crate) reactions: u64,
    pub(crate) reactions_acked: u64,
}

impl PubResult {
    /// Adds another publisher's counts and ack times to these (the totals of
    /// a scenario).
    pub(crate) fn add(&mut self, other: PubResult) {
        // Destructured, so that a new field cannot be left out of the sum.
        let PubResult {
            sent,
            acked,
            refused,
            ack_us,
            acks_out_of_order,
            typing,
            reactions,
            reactions_acked,
        } = other;
        self.sent += sent;
        self.acked += acked;
        self.refused += refused;
        self.ack_us.extend(ack_us);
        self.acks_out_of_order += acks_out_of_order;
        self.typing += typing;
        self.reactions += reactions;
        self.reactions_acked += reactions_acked;
    }
}

/// Room events a publisher sends besides its messages (the mixed load).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Mix {
    /// A `typing` frame after every N-th message (0 = none).
    pub(crate) typing_every: u64,
    /// A reaction to its last acked message after every N-th message (0 = none).
    pub(crate) react_every: u64,
}

/// Where a subscriber reads the server's frames: a WebSocket, or an `/sse`
/// stream (`sse_sub`).
pub(crate) trait Frames {
    /// A frame's text.
    type Text: AsRef<str>;
    /// The next text frame; `None` once the server has ended the stream.
    async fn next_text(&mut self) -> anyhow::Result<Option<Self::Text>>;
}

impl Frames for client::Ws {
    type Text = Utf8Bytes;
    async fn next_text(&mut self) -> anyhow::Result<Option<Utf8Bytes>> {
        while let Some(msg) = self.next().await {
            if let Message::Text(t) = msg? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }
}

/// Reads frames until the `history` frame of the join.
async fn joined(frames: &mut impl Frames) -> anyhow::Result<()> {
    while let Some(t) = frames.next_text().await? {
        let f: Incoming<'_> = serde_json::from_str(t.as_ref())?;
        if f.kind == "history" {
            return Ok(());
        }
    }
    anyhow::bail!("closed before the history frame")
}

/// Joins `room` over a WebSocket, then [`subscribe`]s.
pub(crate) async fn subscriber(
    url: String,
    source: Option<IpAddr>,
    ready: mpsc::Sender<()>,
    target: watch::Receiver<Option<u64>>,
    deadline: Duration,
) -> anyhow::Result<SubStats> {
    let mut ws = client::connect(&url, source).await?;
    let stats = subscribe(&mut ws, ready, target, deadline).await?;
    let _ = ws.close(None).await;
    Ok(stats)
}

/// Waits for the join's history on `frames`, reports readiness, then
/// records deliveries until it has `target` distinct messages (once known)
/// or `deadline` passes.
pub(crate) async fn subscribe(
    frames: &mut impl Frames,
    ready: mpsc::Sender<()>,
    mut target: watch::Receiver<Option<u64>>,
    deadline: Duration,
) -> anyhow::Result<SubStats> {
    joined(frames).await?;
    let _ = ready.send(()).await;
    let mut stats = SubStats::new();
    // One timer for the whole run, not one per received frame.
    let end = tokio::time::sleep(deadline);
    tokio::pin!(end);
    loop {
        if target.borrow().is_some_and(|t| stats.unique() >= t) {
            break;
        }
        tokio::select! {
            biased;
            t = frames.next_text() => {
                let Some(t) = t? else { break };
                let now = client::now_us();
                let f: Incoming<'_> = serde_json::from_str(t.as_ref())?;
                if f.kind != "message" {
                    continue;
                }
                let Some(data) = f.data else { continue };
                if let Some((p, n, sent)) = data.message.as_deref().and_then(client::parse_payload) {
                    stats.record(p, n, sent, data.seq.unwrap_or(0), now);
                }
            }
            r = target.changed() => if r.is_err() { break },
            _ = &mut end => break,
        }
    }
    Ok(stats)
}

/// What a publisher sends, where and how fast.
#[derive(Debug, Clone)]
pub(crate) struct PublisherSpec {
    pub(crate) url: String,
    pub(crate) room: String,
    pub(crate) id: u32,
    pub(crate) pace: Pace,
    pub(crate) duration: Duration,
    pub(crate) pad: usize,
    pub(crate) source: Option<IpAddr>,
    pub(crate) mix: Mix,
    /// Where in the send period this publisher's sends fall, as a fraction
    /// (0..1): publishers at a fixed rate are spread over the period, so
    /// that P publishers at R msg/s are a steady P·R msg/s, not one burst
    /// of P messages every 1/R s.
    pub(crate) phase: f64,
}

/// Joins `room` and, once `start` is set, sends for `duration`, then waits
/// (bounded) for the answers to everything sent.
pub(crate) async fn publisher(
    spec: PublisherSpec,
    start: watch::Receiver<bool>,
) -> anyhow::Result<PubResult> {
    let PublisherSpec {
        url,
        room,
        id,
        pace,
        duration,
        pad,
        source,
        mix,
        phase,
    } = spec;
    let mut last_id: Option<String> = None;
    let mut ws = client::connect(&url, source).await?;
    joined(&mut ws).await?;
    let mut start = start;
    while !*start.borrow() {
        start.changed().await?;
    }
    let mut r = PubResult::default();
    // Send time of each unanswered message, by its client_id (= its number).
    let mut sent_at: HashMap<u64, i64> = HashMap::new();
    let mut last_acked: Option<u64> = None;
    let stop_at = tokio::time::Instant::now() + duration;
    let period = match pace {
        Pace::Rate(rate) => Duration::from_secs_f64(1.0 / rate.max(0.001)),
        Pace::Window(_) => Duration::from_millis(1),
    };
    let offset = match pace {
        Pace::Rate(_) => period.mul_f64(phase.clamp(0.0, 1.0)),
        Pace::Window(_) => Duration::ZERO,
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let drain_end = stop_at + Duration::from_secs(10);
    loop {
        let sending = tokio::time::Instant::now() < stop_at;
        let answered = r.acked + r.refused;
        if !sending && answered >= r.sent && r.reactions_acked >= r.reactions {
            break;
        }
        if tokio::time::Instant::now() > drain_end {
            break;
        }
        let in_flight = r.sent - answered;
        let may_send = sending
            && match pace {
                Pace::Rate(_) => true,
                Pace::Window(w) => in_flight < w as u64,
            };
        tokio::select! {
            _ = tick.tick(), if may_send && matches!(pace, Pace::Rate(_)) => {
                sent_at.insert(r.sent, client::now_us());
                send(&mut ws, &room, id, r.sent, pad).await?;
                r.sent += 1;
                if mix.typing_every > 0 && r.sent % mix.typing_every == 0 {
                    ws.send(Message::Text(client::typing_frame().into())).await?;
                    r.typing += 1;
                }
                if let Some(target) = last_id.as_deref().filter(|_| mix.react_every > 0 && r.sent % mix.react_every == 0) {
                    ws.send(Message::Text(client::react_frame(&room, target, r.sent).into())).await?;
                    r.reactions += 1;
                }
            }
            _ = std::future::ready(()), if may_send && matches!(pace, Pace::Window(_)) => {
                sent_at.insert(r.sent, client::now_us());
                send(&mut ws, &room, id, r.sent, pad).await?;
                r.sent += 1;
            }
            msg = ws.next() => {
                let Some(msg) = msg else { break };
                let Message::Text(t) = msg? else { continue };
                let f: Incoming<'_> = serde_json::from_str(t.as_str())?;
                let client_id = f.data.as_ref().and_then(|d| d.client_id.as_deref());
                let is_reaction = client_id.is_some_and(|c| c.starts_with('r'));
                let n = client_id.and_then(|c| c.parse::<u64>().ok());
                let sent_us = n.and_then(|n| sent_at.remove(&n));
                match f.kind.as_ref() {
                    "ack" if is_reaction => r.reactions_acked += 1,
                    "ack" => {
                        r.acked += 1;
                        if let Some(t) = sent_us {
                            r.ack_us.push(client::now_us().saturating_sub(t).max(0) as u64);
                        }
                        if let (Some(n), Some(last)) = (n, last_acked) {
                            if n < last {
                                r.acks_out_of_order += 1;
                            }
                        }
                        last_acked = n.max(last_acked);
                        last_id = f.data.as_ref().and_then(|d| d.id.as_deref()).map(str::to_owned);
                    }
                    "error" => {
                        if is_reaction {
                            r.reactions_acked += 1;
                        } else {
                            r.refused += 1;
                        }
                        if let Some(code) = f.data.and_then(|d| d.code) {
                            if code != "rate_limited" && code != "unavailable" {
                                anyhow::bail!("publisher {id}: unexpected error {code}");
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(stop_at), if sending => {}
            _ = tokio::time::sleep_until(drain_end) => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(r)
}

async fn send(ws: &mut client::Ws, room: &str, id: u32, n: u64, pad: usize) -> anyhow::Result<()> {
    let text = client::payload(id, n, client::now_us(), pad);
    ws.send(Message::Text(client::message_frame(room, &text, n).into()))
        .await?;
    Ok(())
}
