//! The `reactors` scenario: does the Redis work per reaction grow with the
//! number of users who already reacted (issue 22: "the work per reaction in
//! Redis does not grow with the number of reactors; measure it")?
//!
//! One author posts a message; then blocks of `block` distinct anonymous
//! users (each its own connection, so its own `anon-…` user id) each add 👍
//! to it. For every block the report gives the Redis CPU time per reaction
//! (`INFO commandstats`: the sum of every command's `usec`, before and after
//! the block's reactions are acked and persisted) and the commands per
//! reaction. The connections open before the measured window and close
//! after it, so joins and leaves are not counted. A flat column over the
//! blocks means the cost does not grow with the reactors before it.

use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Incoming};
use crate::scenarios::Targets;
use crate::stats::Report;

/// How long to wait for one block's acks and persistence.
const BLOCK_DEADLINE: Duration = Duration::from_secs(60);

/// Runs the scenario: `users` reactors in blocks of `block`, at most
/// `parallel` connects in flight.
pub(crate) async fn reactors(
    targets: &Targets,
    redis_url: &str,
    users: usize,
    block: usize,
    parallel: usize,
) -> anyhow::Result<Report> {
    let room = format!("react-bench-{}", client::now_us());
    let mut redis = redis::Client::open(chat_shared::config::normalize_redis_url(redis_url))?
        .get_multiplexed_async_connection()
        .await?;
    let target = post_message(&targets.urls[0], &room).await?;
    let mut rows = Vec::new();
    let mut done = 0usize;
    while done < users {
        let n = block.min(users - done);
        let conns = open_block(targets, &room, done, n, parallel).await?;
        let before = commandstats(&mut redis).await?;
        let mut acks = Vec::with_capacity(n);
        for (i, mut sink, ack) in conns {
            sink.send(Message::Text(
                client::react_frame(&room, &target, i as u64).into(),
            ))
            .await?;
            acks.push((sink, ack));
        }
        let mut sinks = Vec::with_capacity(n);
        for (sink, ack) in acks {
            tokio::time::timeout(BLOCK_DEADLINE, ack)
                .await
                .context("a reaction was not acked in time")???;
            sinks.push(sink);
        }
        done += n;
        wait_persisted(&mut redis, &room, &target, done).await?;
        let after = commandstats(&mut redis).await?;
        let usec = (after.0 - before.0) as f64 / n as f64;
        let calls = (after.1 - before.1) as f64 / n as f64;
        println!(
            "reactors {done:>6}  redis µs/reaction {usec:>7.1}  commands/reaction {calls:>5.1}"
        );
        rows.push(serde_json::json!({"reactors": done, "redis_us_per_reaction": usec, "commands_per_reaction": calls}));
        for mut sink in sinks {
            let _ = sink.close().await;
        }
    }
    let mut report = Report {
        scenario: "reactors".into(),
        ..Report::default()
    };
    report.extra.insert("blocks".into(), rows.into());
    Ok(report)
}

/// A connection's number (its reaction's `client_id` is `r<number>`), its
/// sending half, and the signal of its reaction's ack.
type Reactor = (
    usize,
    futures_util::stream::SplitSink<client::Ws, Message>,
    oneshot::Receiver<anyhow::Result<()>>,
);

/// Opens `n` anonymous connections to `room`; each drains what it is sent
/// (so none is cut off as a slow consumer) and signals its `react` ack.
async fn open_block(
    targets: &Targets,
    room: &str,
    first: usize,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Reactor>> {
    let opened = futures_util::stream::iter(first..first + n)
        .map(|i| {
            let url = format!("{}?room={room}", targets.urls[i % targets.urls.len()]);
            let source =
                (!targets.sources.is_empty()).then(|| targets.sources[i % targets.sources.len()]);
            async move {
                let ws = client::connect(&url, source).await?;
                let (sink, mut stream) = ws.split();
                let (tx, rx) = oneshot::channel();
                let want = format!("r{i}");
                tokio::spawn(async move {
                    let mut tx = Some(tx);
                    while let Some(msg) = stream.next().await {
                        let text = match msg {
                            Ok(Message::Text(text)) => text,
                            Ok(Message::Close(frame)) => {
                                if let Some(tx) = tx.take() {
                                    let _ = tx.send(Err(anyhow::anyhow!(
                                        "closed before the ack: {frame:?}"
                                    )));
                                }
                                break;
                            }
                            Ok(_) => continue,
                            Err(e) => {
                                if let Some(tx) = tx.take() {
                                    let _ = tx.send(Err(anyhow::anyhow!(
                                        "read failed before the ack: {e}"
                                    )));
                                }
                                break;
                            }
                        };
                        let Ok(frame) = serde_json::from_str::<Incoming>(&text) else {
                            continue;
                        };
                        let mine = frame
                            .data
                            .as_ref()
                            .and_then(|d| d.client_id.as_deref())
                            .is_some_and(|c| c == want);
                        if !mine {
                            continue;
                        }
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(match frame.kind.as_ref() {
                                "ack" => Ok(()),
                                other => Err(anyhow::anyhow!("reaction answered {other}: {text}")),
                            });
                        }
                    }
                });
                anyhow::Ok((i, sink, rx))
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await;
    opened.into_iter().collect()
}

/// Posts the message everyone reacts to; its id.
async fn post_message(url: &str, room: &str) -> anyhow::Result<String> {
    let mut ws = client::connect(&format!("{url}?room={room}&username=author"), None).await?;
    ws.send(Message::Text(
        client::message_frame(room, "react to me", 1).into(),
    ))
    .await?;
    let deadline = tokio::time::Instant::now() + BLOCK_DEADLINE;
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
        let Message::Text(text) = msg? else { continue };
        let frame: Incoming = serde_json::from_str(&text)?;
        let data = frame.data.as_ref();
        if frame.kind == "ack" && data.and_then(|d| d.client_id.as_deref()) == Some("1") {
            let id = data
                .and_then(|d| d.id.as_deref())
                .context("ack without id")?;
            return Ok(id.to_owned());
        }
    }
    anyhow::bail!("the author's message was not acked")
}

/// Waits until the worker has persisted `count` 👍 on `target`.
async fn wait_persisted(
    redis: &mut redis::aio::MultiplexedConnection,
    room: &str,
    target: &str,
    count: usize,
) -> anyhow::Result<()> {
    let key = format!("chat:reactions:{{messages:{room}}}");
    let deadline = tokio::time::Instant::now() + BLOCK_DEADLINE;
    loop {
        let counts: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(target)
            .query_async(redis)
            .await?;
        let persisted = counts
            .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
            .and_then(|v| v["👍"].as_u64())
            .unwrap_or(0);
        if persisted as usize >= count {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {persisted} of {count} reactions persisted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of `usec` and of `calls` over every command in `INFO commandstats`.
async fn commandstats(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    let mut usec = 0;
    let mut calls = 0;
    for line in info.lines().filter(|l| l.starts_with("cmdstat_")) {
        for field in line.split([':', ',']) {
            if let Some(v) = field.strip_prefix("usec=") {
                usec += v.parse::<u64>().unwrap_or(0);
            } else if let Some(v) = field.strip_prefix("calls=") {
                calls += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok((usec, calls))
}
