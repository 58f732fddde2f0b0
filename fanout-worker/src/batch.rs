//! One batch of stream entries, in four stages: decode → persist and look up
//! gateways → route → acknowledge.
//!
//! A batch costs two round trips. The first pipeline persists every message
//! (Lua, idempotent: `persist`), marks the batch's rooms active and, after
//! those writes, reads which gateways own connections in the rooms. The second
//! publishes one delivery batch per gateway (`publish`), `XACK`s the entries
//! and trims the stream below them (never below a pending entry: `stream`);
//! with webhooks on, the `XACK` is done by a script that first queues the
//! routed records in the shard's webhook outbox (`webhook::outbox`), so an
//! entry is never acked before its records are queued, and the batch never
//! waits on HTTP.
//! Entries are acked only after they are persisted and published, and only
//! while the lease surely holds, so a crash or a lost lease at any point
//! leaves them pending for the next holder, which redoes them idempotently.
//! Entries of a newer envelope version, and their rooms' later entries, are
//! not processed nor acked at all (`hold`).

use std::time::Instant;

use chat_shared::config::ReplicaAck;
use chat_shared::envelope::{now_us, Delivery, StreamEntry};
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::protocol::record_seq;
use chat_shared::redis::Conn;
use chat_shared::redis::RedisError;
use redis::streams::StreamId;

use crate::config::WorkerConfig;
use crate::hold::{Hold, Verdict};
use crate::lease::LeaseClock;
use crate::persist::{self, Persisted};
use crate::publish::{self, Routing};
use crate::stream::Scripts;
use crate::webhook::outbox::Outbox;
use crate::Context;

/// Where a batch's entries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Read for the first time (`XREADGROUP >`).
    New,
    /// Claimed from the pending list: read before, by this or another worker.
    Claimed,
}

/// The scripts a batch runs.
#[derive(Debug)]
pub(crate) struct BatchScripts<'a> {
    /// The persistence script.
    pub(crate) persist: &'a redis::Script,
    /// The stream scripts (trim).
    pub(crate) stream: &'a Scripts,
    /// The shard's webhook outbox, when webhooks are on.
    pub(crate) outbox: Option<Outbox<'a>>,
}

/// Runs one non-empty batch of `stream` through the four stages.
///
/// # Errors
/// Fails when either round trip fails; the entries then stay pending.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn process(
    c: &mut Conn,
    scripts: &BatchScripts<'_>,
    stream: &str,
    ctx: &Context,
    lease: &LeaseClock,
    hold: &mut Hold,
    entries: Vec<StreamId>,
    origin: Origin,
) -> Result<(), RedisError> {
    metrics::histogram!(m::WK_BATCH_SIZE).record(entries.len() as f64);
    let batch = decode(stream, entries, hold, origin);
    if batch.ids.is_empty() {
        // Every entry is held: nothing to persist or ack.
        return Ok(());
    }
    let stored = persist_and_look_up(c, scripts.persist, &ctx.config, &batch.items).await?;
    let now = now_us();
    let routed = route(&batch.items, stored, now, scripts.outbox.is_some());
    if !lease.is_valid() {
        // Persisted (idempotently) but not acked: the next holder publishes.
        return Ok(());
    }
    let applied = applied_by_room(&batch.items);
    acknowledge(c, scripts, stream, &batch.ids, &applied, routed, now).await
}

/// The batch's entry ids per room, for the rooms' records of applied
/// entries (forgotten once acked).
fn applied_by_room(items: &[Item]) -> Vec<(&RoomId, Vec<&str>)> {
    let mut by_room: Vec<(&RoomId, Vec<&str>)> = Vec::new();
    for item in items {
        match by_room.iter_mut().find(|(r, _)| **r == item.room) {
            Some((_, ids)) => ids.push(&item.entry_id),
            None => by_room.push((&item.room, vec![&item.entry_id])),
        }
    }
    by_room
}

/// One decoded entry of a batch.
#[derive(Debug)]
struct Item {
    /// Stream id of the entry.
    entry_id: String,
    entry: StreamEntry,
    /// `entry.room`, validated.
    room: RoomId,
}

/// A batch after decoding.
#[derive(Debug)]
struct Decoded {
    /// The ids to ack, in stream order: the decodable entries and the
    /// undecodable ones, not the held ones.
    ids: Vec<String>,
    /// The decodable entries, in stream order.
    items: Vec<Item>,
}

/// Stage 1: decodes each entry's envelope and validates its room. An entry
/// that fails (a foreign or corrupt record) is counted, logged and skipped,
/// but still acked with the batch so it cannot block the shard. An entry of
/// a newer envelope version, and later entries of its room, are held: left
/// pending, not acked (`hold`).
fn decode(stream: &str, entries: Vec<StreamId>, hold: &mut Hold, origin: Origin) -> Decoded {
    let mut ids = Vec::with_capacity(entries.len());
    let mut items = Vec::with_capacity(entries.len());
    let (mut held, mut newer) = (0, 0);
    for e in entries {
        match hold.judge(&e) {
            Verdict::Process(entry, room) => {
                ids.push(e.id.clone());
                items.push(Item {
                    entry_id: e.id,
                    entry,
                    room,
                });
            }
            Verdict::Hold { newer: is_newer } => {
                held += 1;
                newer += u64::from(is_newer && origin == Origin::New);
            }
            Verdict::Drop => {
                metrics::counter!(m::WK_UNDECODABLE).increment(1);
                tracing::warn!(stream, entry = %e.id, "Undecodable stream entry; acking and skipping it");
                ids.push(e.id);
            }
        }
    }
    hold.report(stream, newer, held);
    Decoded { ids, items }
}

/// What the persist stage learned from Redis.
#[derive(Debug, Default)]
struct Stored {
    /// The script's answer for each item, in item order.
    persisted: Vec<Persisted>,
    /// The batch's rooms, in order of first appearance.
    rooms: Vec<RoomId>,
    /// The gateways with connections in each room of `rooms`, same order.
    gateways: Vec<Vec<String>>,
}

/// Stage 2: persists every item and looks up the gateways of their rooms, in
/// one round trip (none when no entry decoded).
async fn persist_and_look_up(
    c: &mut Conn,
    script: &redis::Script,
    config: &WorkerConfig,
    items: &[Item],
) -> Result<Stored, RedisError> {
    if items.is_empty() {
        return Ok(Stored::default());
    }
    let cluster = c.is_cluster();
    let plan = persist_pipeline(script, config, items, &new_epoch(), cluster);
    let replies: Vec<redis::Value> = plan.pipe.query_async(c).await?;
    let (in_pipeline_order, gateways) =
        split_replies(replies, &plan.wait_groups, config.redis.replica_ack())?;
    // Back into stream order.
    let mut persisted: Vec<Option<Persisted>> = (0..items.len()).map(|_| None).collect();
    for (answer, &i) in in_pipeline_order.into_iter().zip(&plan.order) {
        persisted[i] = Some(answer);
    }
    let persisted: Vec<Persisted> = persisted.into_iter().flatten().collect();
    if persisted.len() != items.len() {
        return Err(RedisError::Command(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "persist pipeline answered fewer items than it was given",
        ))));
    }
    Ok(Stored {
        persisted,
        rooms: plan.rooms,
        gateways,
    })
}

/// The persist stage's pipeline and how to read its replies.
struct PersistPlan {
    pipe: redis::Pipeline,
    /// The batch's rooms, in order of first appearance.
    rooms: Vec<RoomId>,
    /// The item index of each script call, in pipeline order.
    order: Vec<usize>,
    /// The script calls in groups, each followed by a `WAIT` with
    /// `ACK_AFTER_REPLICAS`: one group on one Redis, one per room on a cluster.
    wait_groups: Vec<usize>,
}

/// The persist stage's pipeline: one script call per item, grouped by room
/// (stream order kept within a room; `seq` and history are per room), one
/// `SADD rooms:active` per room, then one `HKEYS` of the room's gateways per
/// room. Redis runs a pipeline in order, so the lookups see the writes: a
/// gateway that registers after the lookup finds the message in history.
///
/// Grouped, a room's calls are one slot run on a cluster (one round trip per
/// room rather than per change of room). With `ACK_AFTER_REPLICAS`, one
/// `WAIT` follows the writes it confirms: after all of them on one Redis,
/// after each room's on a cluster (`WAIT` goes to the node that took them).
fn persist_pipeline(
    script: &redis::Script,
    config: &WorkerConfig,
    items: &[Item],
    epoch: &str,
    cluster: bool,
) -> PersistPlan {
    let mut rooms: Vec<RoomId> = Vec::new();
    let mut by_room: Vec<Vec<usize>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match rooms.iter().position(|r| *r == item.room) {
            Some(r) => by_room[r].push(i),
            None => {
                rooms.push(item.room.clone());
                by_room.push(vec![i]);
            }
        }
    }
    let replica_ack = config.redis.replica_ack();
    let mut pipe = redis::pipe();
    let mut wait_groups = Vec::new();
    for group in &by_room {
        for &i in group {
            let item = &items[i];
            persist::add_to_pipeline(
                &mut pipe,
                script,
                &item.room,
                &item.entry_id,
                &item.entry,
                persist::HistoryBounds {
                    limit: config.history_limit,
                    max_bytes: config.history_max_bytes,
                    ttl_secs: config.history_ttl,
                },
                epoch,
                2 * config.batch_size,
            );
        }
        if cluster {
            wait_groups.push(group.len());
            if let Some(ack) = replica_ack {
                ack.add_wait(&mut pipe);
            }
        }
    }
    if !cluster {
        wait_groups.push(items.len());
        if let Some(ack) = replica_ack {
            ack.add_wait(&mut pipe);
        }
    }
    // Grouped by key, so that on a cluster each room's expiries are one
    // slot run and the `SADD`s another.
    for room in &rooms {
        persist::add_expiry(&mut pipe, room, config.history_ttl);
    }
    for room in &rooms {
        pipe.sadd(keys::ROOMS_ACTIVE, room.as_str()).ignore();
    }
    publish::add_gateway_lookups(&mut pipe, &rooms);
    PersistPlan {
        pipe,
        rooms,
        order: by_room.concat(),
        wait_groups,
    }
}

/// Splits the persist pipeline's replies (`SADD`s are ignored) into the
/// script answers, in pipeline order, and the gateway lists that follow.
/// With `ACK_AFTER_REPLICAS`, `WAIT`'s count follows each group of
/// `wait_groups` answers, and a write that too few replicas confirmed fails
/// the batch: its entries stay pending and are persisted again
/// (idempotently) by the next attempt.
fn split_replies(
    replies: Vec<redis::Value>,
    wait_groups: &[usize],
    replica_ack: Option<ReplicaAck>,
) -> Result<(Vec<Persisted>, Vec<Vec<String>>), RedisError> {
    let parse_error = |e: redis::ParsingError| RedisError::Command(e.into());
    let answers: usize = wait_groups.iter().sum();
    let waits = if replica_ack.is_some() {
        wait_groups.len()
    } else {
        0
    };
    if replies.len() < answers + waits {
        return Err(parse_error(
            "persist pipeline returned too few replies".into(),
        ));
    }
    let mut replies = replies.into_iter();
    let mut persisted = Vec::with_capacity(answers);
    for &group in wait_groups {
        for _ in 0..group {
            let answer = replies.next().unwrap_or(redis::Value::Nil);
            persisted.push(
                <Persisted as redis::FromRedisValue>::from_redis_value(answer)
                    .map_err(parse_error)?,
            );
        }
        if let Some(ack) = replica_ack {
            let count = replies.next().unwrap_or(redis::Value::Nil);
            let confirmed: u32 =
                redis::FromRedisValue::from_redis_value(count).map_err(parse_error)?;
            if confirmed < ack.replicas {
                metrics::counter!(m::WK_REDIS_ERRORS, "op" => "replica_ack").increment(1);
                return Err(parse_error(
                    format!(
                        "a history write reached {confirmed} of {} replicas",
                        ack.replicas
                    )
                    .into(),
                ));
            }
        }
    }
    let gateways = replies
        .map(<Vec<String> as redis::FromRedisValue>::from_redis_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(parse_error)?;
    Ok((persisted, gateways))
}

/// What the route stage produced.
#[derive(Debug, Default)]
struct Routed {
    /// One delivery batch per gateway.
    routing: Routing,
    /// Every routed record, in stream order, for the webhook outbox (empty
    /// when webhooks are off).
    webhook: Vec<Delivery>,
}

/// Stage 3: turns what was stored into one delivery batch per gateway, in
/// stream order, and (with `webhooks`) the list of records to queue for the
/// webhook. An entry stored before (re-processed after a takeover) is
/// delivered again with its stored record and `seq`, since its first delivery
/// may not have happened; one whose record left history is skipped.
fn route(items: &[Item], stored: Stored, now_us: i64, webhooks: bool) -> Routed {
    let mut routing = Routing::default();
    let mut webhook = Vec::new();
    // Metric handles resolved once per batch, not per message.
    let publish_latency = metrics::histogram!(m::WK_PUBLISH_LATENCY_SECONDS);
    let persisted_total = metrics::counter!(m::WK_PERSISTED);
    let duplicate_total = metrics::counter!(m::WK_DUPLICATES);
    for (item, result) in items.iter().zip(stored.persisted) {
        let (seq, record, epoch) = match result {
            Persisted::New { seq, record, epoch } => {
                persisted_total.increment(1);
                (seq, record, epoch)
            }
            Persisted::Duplicate {
                record: Some(record),
                epoch,
            } => {
                duplicate_total.increment(1);
                match record_seq(&record) {
                    Some(seq) => (seq, record, epoch),
                    None => continue,
                }
            }
            Persisted::Duplicate { record: None, .. } => {
                duplicate_total.increment(1);
                continue;
            }
        };
        let idx = stored
            .rooms
            .iter()
            .position(|r| r == &item.room)
            .unwrap_or(0);
        let delivery = Delivery {
            room: item.entry.room.clone(),
            seq,
            epoch,
            record,
            stamped_us: item.entry.stamped_us,
        };
        publish_latency.record((now_us - item.entry.stamped_us).max(0) as f64 / 1e6);
        if let Some(gws) = stored.gateways.get(idx) {
            routing.route(&delivery, gws);
        }
        if webhooks {
            webhook.push(delivery);
        }
    }
    Routed { routing, webhook }
}

/// Stage 4: publishes the delivery batches, queues the records for the
/// webhook, acks every entry of the batch, trims the stream and takes the
/// acked entries out of their rooms' records of applied entries, in one
/// round trip.
async fn acknowledge(
    c: &mut Conn,
    scripts: &BatchScripts<'_>,
    stream: &str,
    ids: &[String],
    applied: &[(&RoomId, Vec<&str>)],
    routed: Routed,
    now_us: i64,
) -> Result<(), RedisError> {
    let publish = c.publish_command();
    let mut pipe = redis::pipe();
    let published = routed.routing.add_publishes(&mut pipe, publish);
    // With webhooks, one script queues the records and then acks the
    // entries (so an entry is never acked unless its records are queued);
    // its answer is the pipeline's only reply.
    let queued = match &scripts.outbox {
        Some(outbox) => outbox.add_append_and_ack(&mut pipe, &routed.webhook, now_us, stream, ids),
        None => false,
    };
    add_ack_and_trim(&mut pipe, scripts.stream, stream, ids, !queued);
    for (room, entry_ids) in applied {
        persist::add_forget_applied(&mut pipe, room, entry_ids);
    }
    let started = Instant::now();
    let replies: Vec<u64> = pipe.query_async(c).await?;
    metrics::counter!(m::WK_PUBLISHES).increment(published as u64);
    let dropped = replies.first().copied().unwrap_or(0);
    if dropped > 0 {
        metrics::counter!(m::WK_WEBHOOK_EVENTS_DROPPED, "reason" => "queue_full")
            .increment(dropped);
        tracing::debug!(stream, dropped, "Webhook outbox full; records dropped");
    }
    tracing::trace!(stream, entries = ids.len(), published, elapsed = ?started.elapsed(), "Batch done");
    Ok(())
}

/// Adds the acknowledge stage's `XACK` (unless `ack` is false: the outbox
/// script acked already) and trim to `pipe`, after the publishes: an entry
/// is acked only once its deliveries are on their way. Neither has a reply.
fn add_ack_and_trim(
    pipe: &mut redis::Pipeline,
    scripts: &Scripts,
    stream: &str,
    ids: &[String],
    ack: bool,
) {
    if let Some(last) = ids.last() {
        if ack {
            pipe.xack(stream, keys::CONSUMER_GROUP, ids).ignore();
        }
        // Everything up to `last` is processed and acked: entries below it
        // can go, unless still pending (held, or a failed batch's).
        scripts.add_trim(pipe, stream, last);
    }
}

/// A fresh epoch candidate; only used when a room's state is created.
fn new_epoch() -> String {
    format!("{:x}", now_us())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chat_shared::envelope::STREAM_FIELD;
    use clap::Parser;
    use redis::Value;

    use super::*;

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
}
