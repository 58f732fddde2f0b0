//! The stages of a batch, each on its own, without Redis.

use std::collections::HashMap;

use chat_shared::config::ReplicaAck;
use chat_shared::envelope::{Delivery, StreamEntry, STREAM_FIELD};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use clap::Parser;
use redis::streams::StreamId;
use redis::Value;

use super::ack::add_ack_and_trim;
use super::decode::{decode, Item};
use super::persist::{persist_pipeline, split_replies, Stored};
use super::route::{route, Routed};
use super::Origin;
use crate::config::WorkerConfig;
use crate::hold::Hold;
use crate::persist::{self, Persisted};
use crate::publish::Routing;
use crate::stream::Scripts;

fn entry(room: &str) -> StreamEntry {
    StreamEntry {
        v: chat_shared::envelope::VERSION,
        id: format!("msg-{room}"),
        room: room.into(),
        username: "ana".into(),
        message: "hi".into(),
        timestamp: "2026-11-27T14:00:00.000Z".into(),
        stamped_us: 1,
        user_id: None,
        ..Default::default()
    }
}

fn stream_id(id: &str, field: Option<Value>) -> StreamId {
    StreamId {
        id: id.into(),
        map: field
            .map(|v| HashMap::from([(STREAM_FIELD.to_owned(), v)]))
            .unwrap_or_default(),
        ..StreamId::default()
    }
}

fn item(id: &str, room: &str) -> Item {
    Item {
        entry_id: id.into(),
        entry: entry(room),
        room: RoomId::parse(room).unwrap(),
    }
}

/// Each command of `pipe` as its space-separated arguments.
fn commands(pipe: &redis::Pipeline) -> Vec<String> {
    pipe.cmd_iter()
        .map(|c| {
            c.args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                    _ => "<other>".into(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn decode_acks_garbage_keeps_the_valid_and_holds_the_newer() {
    let valid = |room: &str| Some(Value::BulkString(entry(room).encode()));
    let mut newer = entry("c");
    newer.v = chat_shared::envelope::NEWEST_ENTRY_VERSION + 1;
    let mut hold = Hold::default();
    let batch = decode(
        "s",
        vec![
            stream_id("1-0", valid("a")),
            stream_id("2-0", None),
            stream_id("3-0", Some(Value::Int(7))),
            stream_id("4-0", Some(Value::BulkString(b"junk".to_vec()))),
            stream_id("5-0", valid("bad room")),
            stream_id("6-0", Some(Value::BulkString(newer.encode()))),
            stream_id("7-0", valid("c")),
            stream_id("8-0", valid("b")),
        ],
        &mut hold,
        Origin::New,
    );
    assert_eq!(batch.ids, ["1-0", "2-0", "3-0", "4-0", "5-0", "8-0"]);
    let kept: Vec<_> = batch
        .items
        .iter()
        .map(|i| (i.entry_id.as_str(), i.room.as_str()))
        .collect();
    assert_eq!(kept, [("1-0", "a"), ("8-0", "b")]);
}

#[test]
fn persist_pipeline_writes_before_it_looks_up_each_room_once() {
    let config = WorkerConfig::try_parse_from(["worker"]).unwrap();
    let items = [item("1-0", "a"), item("2-0", "b"), item("3-0", "a")];
    let plan = persist_pipeline(&persist::script(), &config, &items, "e1", false);
    let (pipe, rooms) = (plan.pipe, plan.rooms);
    assert_eq!(
        rooms,
        [RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap()]
    );
    let cmds = commands(&pipe);
    let names: Vec<&str> = cmds.iter().map(|c| c.split(' ').next().unwrap()).collect();
    let mut want = vec!["EVALSHA"; 3];
    // Each room's five history keys get their TTL once per batch.
    want.extend(["EXPIRE"; 10]);
    want.extend(["SADD", "SADD", "HKEYS", "HKEYS"]);
    assert_eq!(names, want);
    let room_a = RoomId::parse("a").unwrap();
    assert_eq!(
        cmds[3],
        format!("EXPIRE {} {}", keys::messages(&room_a), config.history_ttl)
    );
    assert_eq!(cmds[13], format!("SADD {} a", keys::ROOMS_ACTIVE));
    assert_eq!(cmds[15], format!("HKEYS {}", keys::room_gateways(&room_a)));
}

#[test]
fn persist_pipeline_groups_rooms_and_waits_once_per_group() {
    let config = WorkerConfig::try_parse_from(["worker", "--ack-after-replicas", "1"]).unwrap();
    let items = [item("1-0", "a"), item("2-0", "b"), item("3-0", "a")];
    let names = |pipe: &redis::Pipeline| -> Vec<String> {
        commands(pipe)
            .iter()
            .map(|c| c.split(' ').next().unwrap().to_owned())
            .take_while(|n| n != "EXPIRE")
            .collect()
    };
    // One Redis: every write, then one WAIT.
    let single = persist_pipeline(&persist::script(), &config, &items, "e1", false);
    assert_eq!(single.order, [0, 2, 1], "room a's items, then room b's");
    assert_eq!(
        names(&single.pipe),
        ["EVALSHA", "EVALSHA", "EVALSHA", "WAIT"]
    );
    assert_eq!(single.wait_groups, [3]);
    // A cluster: one WAIT after each room's writes, on their node.
    let cluster = persist_pipeline(&persist::script(), &config, &items, "e1", true);
    assert_eq!(
        names(&cluster.pipe),
        ["EVALSHA", "EVALSHA", "WAIT", "EVALSHA", "WAIT"]
    );
    assert_eq!(cluster.wait_groups, [2, 1]);
}

#[test]
fn replies_split_into_script_answers_and_gateway_lists() {
    let answer = |seq, record: Option<&str>| {
        Value::Array(vec![
            Value::Int(seq),
            record.map_or(Value::Nil, |r| Value::BulkString(r.into())),
            Value::BulkString(b"e1".to_vec()),
        ])
    };
    let gateways = Value::Array(vec![Value::BulkString(b"g1".to_vec())]);
    let (persisted, lookups) = split_replies(
        vec![answer(4, Some("{}")), answer(0, None), gateways.clone()],
        &[2],
        None,
    )
    .unwrap();
    assert_eq!(
        persisted,
        [
            Persisted::New {
                seq: 4,
                record: "{}".into(),
                epoch: "e1".into()
            },
            Persisted::Duplicate {
                record: None,
                epoch: "e1".into()
            },
        ]
    );
    assert_eq!(lookups, [vec!["g1".to_owned()]]);
    assert!(split_replies(vec![answer(1, Some("{}"))], &[2], None).is_err());

    // With ACK_AFTER_REPLICAS each answer is followed by WAIT's count.
    let ack = Some(ReplicaAck {
        replicas: 1,
        timeout_ms: 10,
    });
    let (persisted, lookups) = split_replies(
        vec![answer(5, Some("{}")), Value::Int(1), gateways.clone()],
        &[1],
        ack,
    )
    .unwrap();
    assert_eq!(persisted.len(), 1);
    assert_eq!(lookups.len(), 1);
    let short = split_replies(
        vec![answer(5, Some("{}")), Value::Int(0), gateways],
        &[1],
        ack,
    );
    assert!(
        short.is_err(),
        "a write no replica confirmed fails the batch"
    );
}

#[test]
fn route_delivers_new_and_stored_duplicates_to_their_rooms_gateways() {
    let items = [
        item("1-0", "a"),
        item("2-0", "b"),
        item("3-0", "a"),
        item("4-0", "b"),
    ];
    let epoch = || "e1".to_owned();
    let stored = Stored {
        persisted: vec![
            Persisted::New {
                seq: 5,
                record: r#"{"seq":5}"#.into(),
                epoch: epoch(),
            },
            // Re-processed: delivered again with its stored seq.
            Persisted::Duplicate {
                record: Some(r#"{"seq":3}"#.into()),
                epoch: epoch(),
            },
            // No longer in history, or no readable seq: skipped.
            Persisted::Duplicate {
                record: None,
                epoch: epoch(),
            },
            Persisted::Duplicate {
                record: Some("{}".into()),
                epoch: epoch(),
            },
        ],
        rooms: vec![RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap()],
        gateways: vec![vec!["g1".into(), "g2".into()], vec!["g2".into()]],
    };
    let Routed { routing, webhook } = route(&items, stored, 10, true);
    let queued: Vec<_> = webhook.iter().map(|d| (d.room.as_str(), d.seq)).collect();
    assert_eq!(queued, [("a", 5), ("b", 3)]);
    let seqs = |gw| {
        routing
            .deliveries(gw)
            .iter()
            .map(|d| (d.room.clone(), d.seq))
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs("g1"), [("a".to_owned(), 5)]);
    assert_eq!(seqs("g2"), [("a".to_owned(), 5), ("b".to_owned(), 3)]);
}

#[test]
fn ack_publishes_then_acks_and_trims_every_entry() {
    let mut routing = Routing::default();
    let delivery = Delivery {
        room: "a".into(),
        seq: 1,
        epoch: "e1".into(),
        record: "{}".into(),
        stamped_us: 0,
    };
    routing.route(&delivery, &["g1".into()]);
    let ids = ["1-0".to_owned(), "2-0".to_owned()];
    let scripts = Scripts::new();
    let mut pipe = redis::pipe();
    assert_eq!(routing.add_publishes(&mut pipe, "PUBLISH"), 1);
    add_ack_and_trim(&mut pipe, &scripts, "s", &ids, true);
    let cmds = commands(&pipe);
    assert_eq!(cmds.len(), 3);
    assert!(cmds[0].starts_with(&format!("PUBLISH {} ", keys::gateway_channel("g1"))));
    assert_eq!(cmds[1], format!("XACK s {} 1-0 2-0", keys::CONSUMER_GROUP));
    assert!(cmds[2].starts_with("EVALSHA "), "{}", cmds[2]);
    assert!(cmds[2].ends_with(&format!(" 1 s {} 2-0", keys::CONSUMER_GROUP)));
    // Acked by the outbox script: only the trim.
    let mut pipe = redis::pipe();
    add_ack_and_trim(&mut pipe, &scripts, "s", &ids, false);
    assert_eq!(commands(&pipe).len(), 1);
    // Nothing to ack (all held): no ack, no trim.
    let mut pipe = redis::pipe();
    add_ack_and_trim(&mut pipe, &scripts, "s", &[], true);
    assert!(commands(&pipe).is_empty());
}
