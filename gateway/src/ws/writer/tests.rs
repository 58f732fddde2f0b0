//! The writer against a `Vec` sink and a history source that fails on cue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;
use crate::rooms::history::Snapshot;
use chat_shared::redis::RedisError;

/// Answers history reads from a script of results; records every range read.
#[derive(Debug, Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<Result<Snapshot, RedisError>>>>,
    reads: Arc<Mutex<Vec<Range>>>,
}

impl Scripted {
    fn answer(&self, a: Result<Snapshot, RedisError>) {
        self.answers.lock().unwrap().push_back(a);
    }
}

impl HistorySource for Scripted {
    fn read(
        &self,
        range: Range,
    ) -> impl std::future::Future<Output = Result<Snapshot, RedisError>> + Send {
        self.reads.lock().unwrap().push(range);
        let next = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err(RedisError::Timeout));
        async move { next }
    }
}

fn record(seq: u64) -> String {
    format!(r#"{{"id":"m{seq}","seq":{seq}}}"#)
}

fn snap(seqs: std::ops::RangeInclusive<u64>, epoch: &str) -> Snapshot {
    Snapshot {
        records: seqs.clone().map(|s| (s, record(s))).collect(),
        latest_seq: *seqs.end(),
        epoch: Some(epoch.into()),
        held: seqs.end() - seqs.start() + 1,
    }
}

fn live(seq: u64, epoch: &str) -> Outbound {
    Outbound::Message(Arc::new(LiveMessage::new(
        seq,
        Arc::from(epoch),
        live_frame(&record(seq)).unwrap().into(),
    )))
}

/// Runs a writer at `last_seq` 1 of epoch `e` over `deliveries` until it
/// ends or goes idle; returns its result and what it wrote.
async fn run(
    history: Scripted,
    deliveries: Vec<Outbound>,
) -> (Option<Result<(), CloseReason>>, Vec<serde_json::Value>) {
    let (tx, rx) = queue::channel(16);
    for d in deliveries {
        tx.try_send(d).unwrap();
    }
    let limits = WriterLimits {
        write_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_secs(3600),
        reset_tail: 10,
    };
    let mut writer = Writer::new(
        RoomId::parse("r").unwrap(),
        history,
        Cursor::new(1, Some("e".into())),
        rx,
        CancellationToken::new(),
        limits,
    );
    let mut sink: Vec<Message> = Vec::new();
    // With the clock paused, this times out as soon as the writer is idle.
    let ended = tokio::time::timeout(Duration::from_secs(60), writer.run(&mut sink))
        .await
        .ok();
    let written = sink
        .into_iter()
        .filter_map(|m| match m {
            Message::Text(t) => Some(serde_json::from_str(t.as_str()).unwrap()),
            _ => None,
        })
        .collect();
    (ended, written)
}

fn seqs(frames: &[serde_json::Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["data"]["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn repeats_are_dropped_and_order_kept() {
    let (ended, out) = run(
        Scripted::default(),
        vec![live(1, "e"), live(2, "e"), live(2, "e"), live(3, "e")],
    )
    .await;
    assert_eq!(ended, None, "still serving");
    assert_eq!(seqs(&out), [2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_gap_is_filled_from_history_before_the_live_message() {
    let history = Scripted::default();
    history.answer(Ok(snap(2..=4, "e")));
    let (ended, out) = run(history.clone(), vec![live(5, "e")]).await;
    assert_eq!(ended, None);
    assert_eq!(seqs(&out), [2, 3, 4, 5]);
    assert_eq!(*history.reads.lock().unwrap(), [Range::After(1)]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_gap_fill_is_retried() {
    let history = Scripted::default();
    history.answer(Err(RedisError::Timeout));
    history.answer(Ok(snap(2..=4, "e")));
    let (ended, out) = run(history.clone(), vec![live(5, "e")]).await;
    assert_eq!(ended, None);
    assert_eq!(seqs(&out), [2, 3, 4, 5]);
    assert_eq!(history.reads.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_gap_that_cannot_be_filled_closes_instead_of_skipping() {
    let history = Scripted::default();
    for _ in 0..recovery::READ_ATTEMPTS {
        history.answer(Err(RedisError::Timeout));
    }
    let (ended, out) = run(
        history.clone(),
        vec![live(2, "e"), live(5, "e"), live(6, "e")],
    )
    .await;
    assert_eq!(ended, Some(Err(CloseReason::GapUnfilled)));
    assert_eq!(
        seqs(&out),
        [2],
        "nothing past the gap is delivered: the client recovers with since=2"
    );
    assert_eq!(
        history.reads.lock().unwrap().len(),
        recovery::READ_ATTEMPTS as usize
    );
}

#[tokio::test(start_paused = true)]
async fn a_resync_that_cannot_read_history_closes() {
    let (ended, out) = run(Scripted::default(), vec![Outbound::Resync]).await;
    assert_eq!(ended, Some(Err(CloseReason::GapUnfilled)));
    assert!(out.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_trimmed_gap_is_a_truncated_history_never_a_silent_jump() {
    let history = Scripted::default();
    // Seqs 2..=3 were trimmed: history holds only 4.
    history.answer(Ok(snap(4..=4, "e")));
    let (ended, out) = run(history, vec![live(5, "e")]).await;
    assert_eq!(ended, None);
    assert_eq!(out[0]["type"], "history");
    assert_eq!(out[0]["data"]["truncated"], true);
    assert_eq!(seqs_of_history(&out[0]), [4]);
    assert_eq!(seqs(&out[1..]), [5]);

    // Everything in the gap trimmed (history holds 5 and later only): an
    // empty truncated history, then the live message.
    let history = Scripted::default();
    history.answer(Ok(snap(5..=6, "e")));
    let (ended, out) = run(history, vec![live(5, "e"), live(6, "e")]).await;
    assert_eq!(ended, None);
    assert_eq!(out[0]["data"]["truncated"], true);
    assert_eq!(seqs_of_history(&out[0]), Vec::<u64>::new());
    assert_eq!(seqs(&out[1..]), [5, 6]);
}

fn seqs_of_history(frame: &serde_json::Value) -> Vec<u64> {
    frame["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn another_epoch_resets_the_client() {
    let history = Scripted::default();
    history.answer(Ok(snap(1..=2, "new")));
    let (ended, out) = run(history, vec![live(2, "new"), live(3, "new")]).await;
    assert_eq!(ended, None);
    assert_eq!(out[0]["type"], "history");
    assert_eq!(out[0]["data"]["reset"], "epoch_changed");
    assert_eq!(out[0]["data"]["messages"].as_array().unwrap().len(), 2);
    assert_eq!(seqs(&out[1..]), [3]);
}

#[tokio::test(start_paused = true)]
async fn replies_are_written_then_the_writer_ends_with_the_reader() {
    let (tx, outbound) = queue::channel(4);
    tx.try_send(Outbound::Reply(Box::new("{\"type\":\"ack\"}".into())))
        .unwrap();
    tx.try_send(Outbound::Reply(Box::new("{\"type\":\"error\"}".into())))
        .unwrap();
    tx.try_send(Outbound::ReaderDone).unwrap();
    let limits = WriterLimits {
        write_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_secs(3600),
        reset_tail: 10,
    };
    let mut writer = Writer::new(
        RoomId::parse("r").unwrap(),
        Scripted::default(),
        Cursor::default(),
        outbound,
        CancellationToken::new(),
        limits,
    );
    let mut sink: Vec<Message> = Vec::new();
    assert_eq!(writer.run(&mut sink).await, Ok(()));
    assert_eq!(sink.len(), 2, "both replies written before the end");
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_kick_ends_the_writer_as_a_slow_consumer() {
    let (_tx, outbound) = queue::channel(4);
    let kick = CancellationToken::new();
    kick.cancel();
    let limits = WriterLimits {
        write_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_secs(3600),
        reset_tail: 10,
    };
    let mut writer = Writer::new(
        RoomId::parse("r").unwrap(),
        Scripted::default(),
        Cursor::default(),
        outbound,
        kick,
        limits,
    );
    let mut sink: Vec<Message> = Vec::new();
    assert_eq!(writer.run(&mut sink).await, Err(CloseReason::SlowConsumer));
}
