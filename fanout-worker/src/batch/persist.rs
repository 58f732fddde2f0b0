//! Stage 2 of a batch: persist every item (the idempotent script of
//! [`crate::persist`]) and look up the gateways of their rooms, in one
//! round trip.

use chat_shared::config::ReplicaAck;
use chat_shared::envelope::now_us;
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::{Conn, RedisError};

use super::decode::Item;
use crate::config::WorkerConfig;
use crate::persist::{self, Persisted};
use crate::publish;

/// What the persist stage learned from Redis.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// The script's answer for each item, in item order.
    pub(super) persisted: Vec<Persisted>,
    /// The batch's rooms, in order of first appearance.
    pub(super) rooms: Vec<RoomId>,
    /// The gateways with connections in each room of `rooms`, same order.
    pub(super) gateways: Vec<Vec<String>>,
}

/// Stage 2: persists every item and looks up the gateways of their rooms, in
/// one round trip (none when no entry decoded).
pub(super) async fn persist_and_look_up(
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
pub(super) struct PersistPlan {
    pub(super) pipe: redis::Pipeline,
    /// The batch's rooms, in order of first appearance.
    pub(super) rooms: Vec<RoomId>,
    /// The item index of each script call, in pipeline order.
    pub(super) order: Vec<usize>,
    /// The script calls in groups, each followed by a `WAIT` with
    /// `ACK_AFTER_REPLICAS`: one group on one Redis, one per room on a cluster.
    pub(super) wait_groups: Vec<usize>,
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
pub(super) fn persist_pipeline(
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
pub(super) fn split_replies(
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

/// A fresh epoch candidate; only used when a room's state is created.
pub(super) fn new_epoch() -> String {
    format!("{:x}", now_us())
}
