//! Pipelined appends: a connection that sends without waiting for acks has
//! several messages stored per round trip, gets every answer in the order it
//! sent, and its messages are stored in that order; under a Redis fault the
//! messages behind a failed one are refused, never stored ahead of it, until
//! the failed one is resent.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// No per-connection rate limit in the way of a fast sender.
const UNLIMITED: &[(&str, &str)] = &[
    ("RATE_LIMIT_PER_SEC", "1000000"),
    ("RATE_LIMIT_BURST", "1000000"),
    ("STREAM_SHARDS", "4"),
    ("REDIS_TIMEOUT_MS", "1000"),
];

fn frame(room: &str, i: usize) -> String {
    json!({"type":"message","data":{"room":room,"message":format!("m-{i}"),"client_id":format!("{i}")}})
        .to_string()
}

/// The answer a message got: acked with its id, or refused.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Acked(String),
    Refused(String),
}

/// Every answer in arrival order, as `(client_id, answer)`.
type Answers = Arc<Mutex<Vec<(usize, Answer)>>>;

/// Reads frames until the socket closes, recording acks and errors.
async fn read_answers<S>(mut rx: S, answers: Answers)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        let Some(cid) = v["data"]["client_id"].as_str().and_then(|c| c.parse().ok()) else {
            continue;
        };
        let answer = match v["type"].as_str() {
            Some("ack") => Answer::Acked(v["data"]["id"].as_str().unwrap().to_owned()),
            Some("error") => Answer::Refused(v["data"]["code"].as_str().unwrap().to_owned()),
            _ => continue,
        };
        answers.lock().unwrap().push((cid, answer));
    }
}

/// The stored messages' numbers (`m-<i>`), oldest first.
fn stored_numbers(records: &[Value]) -> Vec<usize> {
    records
        .iter()
        .map(|r| {
            r["message"].as_str().unwrap()[2..]
                .parse::<usize>()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_does_not_wait_gets_answers_in_order_and_its_order_is_stored() {
    let redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let gw = start_gateway(&redis.url(), "gw1", UNLIMITED).await;
    let (client, _) = tokio_tungstenite::connect_async(gw.ws_url("room=pipe"))
        .await
        .unwrap();
    let (mut tx, rx) = client.split();
    let answers: Answers = Arc::default();
    let reader = tokio::spawn(read_answers(rx, answers.clone()));
    // 600 messages written back to back, without reading in between.
    let total = 600;
    for i in 0..total {
        tx.feed(Message::Text(frame("pipe", i).into()))
            .await
            .unwrap();
    }
    tx.flush().await.unwrap();
    eventually("every message answered", DEADLINE, || async {
        (answers.lock().unwrap().len() >= total).then_some(())
    })
    .await;
    let got = answers.lock().unwrap().clone();
    let order: Vec<usize> = got.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        order,
        (0..total).collect::<Vec<_>>(),
        "answers in send order"
    );
    assert!(
        got.iter().all(|(_, a)| matches!(a, Answer::Acked(_))),
        "every message acked: {:?}",
        got.iter().find(|(_, a)| !matches!(a, Answer::Acked(_)))
    );
    // Stored (and given seq) in the order sent.
    let records = eventually("all persisted", DEADLINE, || async {
        let r = stored_records(&redis, "pipe").await;
        (r.len() >= total).then_some(r)
    })
    .await;
    assert_eq!(stored_numbers(&records), (0..total).collect::<Vec<_>>());
    // More than one message per round trip: the appends were pipelined.
    let addr = gw.addr();
    let trips = metric(&addr, "chat_gateway_append_batch_messages_count")
        .await
        .unwrap();
    let stored = metric(&addr, "chat_gateway_append_batch_messages_sum")
        .await
        .unwrap();
    eprintln!("{stored} messages in {trips} append round trips");
    assert_eq!(stored, total as f64);
    assert!(
        trips < total as f64 / 2.0,
        "{total} messages took {trips} round trips: not batched"
    );
    drop(tx);
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_under_pipelined_appends_refuses_what_follows_and_never_reorders() {
    let mut redis = Redis::start_durable().await;
    // History keeps every message of the run.
    let worker_env = [FAST_WORKER, &[("HISTORY_LIMIT", "100000")]].concat();
    let _w = start_worker(&redis.url(), "w1", &worker_env).await;
    let gw = start_gateway(&redis.url(), "gw1", UNLIMITED).await;
    let (client, _) = tokio_tungstenite::connect_async(gw.ws_url("room=pipefault"))
        .await
        .unwrap();
    let (mut tx, rx) = client.split();
    let answers: Answers = Arc::default();
    let reader = tokio::spawn(read_answers(rx, answers.clone()));
    // A sender that writes bursts of 20 every 2 ms until told to stop.
    let (stop_tx, stop_rx) = watch::channel(false);
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        while !*stop_rx.borrow() {
            tick.tick().await;
            for _ in 0..20 {
                tx.feed(Message::Text(frame("pipefault", sent).into()))
                    .await
                    .unwrap();
                sent += 1;
            }
            tx.flush().await.unwrap();
        }
        (tx, sent)
    });
    let count = |pred: fn(&Answer) -> bool| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, a)| pred(a))
            .count()
    };
    eventually("traffic acked", DEADLINE, || async {
        (count(|a| matches!(a, Answer::Acked(_))) >= 300).then_some(())
    })
    .await;
    redis.stop();
    eventually("messages refused while Redis is down", DEADLINE, || async {
        (count(|a| matches!(a, Answer::Refused(_))) >= 50).then_some(())
    })
    .await;
    redis.restart().await;
    // Redis is back, but the sender has not resent its first refused
    // message: everything it sends meanwhile is refused too (DESIGN.md,
    // "Send order after a refusal").
    let answered = answers.lock().unwrap().len();
    eventually(
        "messages sent after the restart answered",
        DEADLINE,
        || async { (answers.lock().unwrap().len() >= answered + 200).then_some(()) },
    )
    .await;
    stop_tx.send(true).unwrap();
    let (mut tx, sent) = sender.await.unwrap();
    eventually("every message answered", DEADLINE, || async {
        (answers.lock().unwrap().len() >= sent).then_some(())
    })
    .await;
    let got = answers.lock().unwrap().clone();
    assert_eq!(
        got.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        (0..sent).collect::<Vec<_>>(),
        "one answer per message, in send order"
    );
    let refused: Vec<usize> = got
        .iter()
        .filter(|(_, a)| matches!(a, Answer::Refused(_)))
        .map(|(c, _)| *c)
        .collect();
    assert!(
        got.iter()
            .all(|(_, a)| !matches!(a, Answer::Refused(code) if code != "unavailable")),
        "refusals are `unavailable`"
    );
    eprintln!(
        "sent {sent}, refused {} (first {:?}, last {:?})",
        refused.len(),
        refused.first(),
        refused.last()
    );
    let first_refused = refused[0];
    assert_eq!(
        refused,
        (first_refused..sent).collect::<Vec<_>>(),
        "after a refusal every later message is refused until the refused one comes back"
    );

    // What Redis holds of the first sends is in send order: no message was
    // stored ahead of one sent before it.
    let stream_order = |records: &[Value]| stored_numbers(records);
    // Every acked message persisted (the worker reconnects to the restarted
    // Redis first). Counting records is not enough: a message refused after
    // a Redis error may have been stored too, so the count can be reached
    // while an acked one is still on its way.
    let first_pass = eventually(
        "every acked send persisted",
        Duration::from_secs(30),
        || async {
            let r = stored_records(&redis, "pipefault").await;
            let stored = stored_numbers(&r);
            got.iter()
                .filter(|(_, a)| matches!(a, Answer::Acked(_)))
                .all(|(c, _)| stored.contains(c))
                .then_some(r)
        },
    )
    .await;
    let first = stream_order(&first_pass);
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "stored out of send order: {first:?}"
    );
    let acked_ids: HashMap<usize, &String> = got
        .iter()
        .filter_map(|(c, a)| match a {
            Answer::Acked(id) => Some((*c, id)),
            Answer::Refused(_) => None,
        })
        .collect();
    for (i, r) in first.iter().zip(&first_pass) {
        if let Some(id) = acked_ids.get(i) {
            assert_eq!(
                r["id"].as_str(),
                Some(id.as_str()),
                "m-{i} stored with its acked id"
            );
        }
    }
    for i in acked_ids.keys() {
        assert!(first.contains(i), "acked m-{i} is stored");
    }

    // The documented recovery: resend every refused message, in order, with
    // its client_id; each is then stored exactly once.
    answers.lock().unwrap().clear();
    for &i in &refused {
        tx.feed(Message::Text(frame("pipefault", i).into()))
            .await
            .unwrap();
    }
    tx.flush().await.unwrap();
    eventually("resends answered", DEADLINE, || async {
        (answers.lock().unwrap().len() >= refused.len()).then_some(())
    })
    .await;
    assert!(
        answers
            .lock()
            .unwrap()
            .iter()
            .all(|(_, a)| matches!(a, Answer::Acked(_))),
        "every resend acked"
    );
    let all = eventually("everything persisted", DEADLINE, || async {
        let r = stored_records(&redis, "pipefault").await;
        (r.len() >= sent).then_some(r)
    })
    .await;
    let mut numbers = stream_order(&all);
    assert_eq!(numbers.len(), sent, "no message stored twice");
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..sent).collect::<Vec<_>>(),
        "every message stored"
    );
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_batch_every_frame_is_still_answered_in_order() {
    let mut redis = Redis::start().await;
    let _w = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let gw = start_gateway(&redis.url(), "gw1", UNLIMITED).await;
    let (client, _) = tokio_tungstenite::connect_async(gw.ws_url("room=pipereply"))
        .await
        .unwrap();
    let (mut tx, mut rx) = client.split();
    // Joined; then a first message starts the connection's appender.
    let next_type = |v: &Value| v["type"].as_str().unwrap_or_default().to_owned();
    loop {
        let Some(Ok(Message::Text(t))) = rx.next().await else {
            panic!("closed before the join history")
        };
        if next_type(&serde_json::from_str(t.as_str()).unwrap()) == "history" {
            break;
        }
    }
    tx.send(Message::Text(frame("pipereply", 0).into()))
        .await
        .unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = rx.next().await else {
            panic!("closed before the first ack")
        };
        if next_type(&serde_json::from_str(t.as_str()).unwrap()) == "ack" {
            break;
        }
    }
    redis.stop();
    // Messages, a frame that is refused on its own (bad JSON), messages,
    // back to back; then one more bad frame to mark the end.
    for i in 1..=5 {
        tx.feed(Message::Text(frame("pipereply", i).into()))
            .await
            .unwrap();
    }
    tx.feed(Message::Text("not json".into())).await.unwrap();
    for i in 6..=8 {
        tx.feed(Message::Text(frame("pipereply", i).into()))
            .await
            .unwrap();
    }
    tx.feed(Message::Text("still not json".into()))
        .await
        .unwrap();
    tx.flush().await.unwrap();
    // (client_id or "bad_json", type) of every answer, in arrival order.
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + DEADLINE;
    while got.len() < 10 {
        let msg = tokio::time::timeout_at(end, rx.next())
            .await
            .expect("every frame answered before the deadline")
            .unwrap_or_else(|| panic!("closed after {got:?}"))
            .unwrap();
        let Message::Text(t) = msg else {
            eprintln!("{msg:?}");
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        match v["type"].as_str() {
            Some("ack") | Some("error") => {}
            _ => continue,
        }
        let who = match v["data"]["client_id"].as_str() {
            Some(c) => c.to_owned(),
            None => v["data"]["code"]
                .as_str()
                .unwrap_or_else(|| panic!("{v}"))
                .to_owned(),
        };
        got.push(who);
    }
    let want: Vec<String> = [
        "1", "2", "3", "4", "5", "bad_json", "6", "7", "8", "bad_json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(got, want, "one answer per frame, in the order sent");
}
