//! Stamping validated messages and appending them to their room's stream
//! shard, one message or a batch of one connection's messages at a time.
//!
//! The append is the durability point: once it returns, a worker will
//! persist and deliver the entry even if this gateway dies, so only then is the
//! sender acked. One Lua call per batch (all its keys share the shard's hash
//! tag) does, for each message in order:
//! - **Deduplication.** A message with a `client_id` leaves a marker
//!   `(room, user, client_id) → (id, timestamp)` for `DEDUPE_WINDOW_SECS`. A
//!   retry with the same `client_id` (after a timeout whose append did land, or
//!   after a reconnect) finds it and is acked with the original `id` and
//!   `timestamp` instead of being stored twice.
//! - **Replicas.** With `ACK_AFTER_REPLICAS` the script is followed by
//!   `WAIT`, which waits only for the writes of its own connection. A
//!   repeat wrote nothing, so its `WAIT` could return at once while no
//!   replica had the original (sent on another connection, whose own
//!   `WAIT` may still be running or have timed out): the resend was acked,
//!   and a failover then lost it. So a repeat rewrites its marker's expiry
//!   (the same remaining TTL, `PEXPIRE`): a write that is replicated after
//!   the original's, so the `WAIT` behind it returns only once a replica
//!   also holds the original. (Simpler than comparing `INFO replication`
//!   offsets, and `WAITAOF` answers another question.) Some Redis versions
//!   count every earlier write of the server for `WAIT`, which hid this;
//!   the rewrite does not depend on it.
//! - **Back-pressure.** Above `STREAM_BACKLOG_MAX` entries in the shard (workers
//!   down or behind), the append is refused and the sender gets `unavailable`,
//!   so a stalled pipeline cannot fill Redis's memory. The messages behind a
//!   refused one in the same batch are not stored either
//!   ([`AppendError::AfterFailure`]): what is stored of a batch is always a
//!   prefix of it, in order.
//! - The `XADD` itself.
//!
//! The batch is one script call, so it is stored entirely (up to a refusal)
//! or not at all: after a Redis error or timeout, resending its messages with
//! the same `client_id`s stores each exactly once. The script is sent once:
//! neither we nor the Redis client library re-send it after a lost reply
//! ([`RedisHandle::pipe_once`]). On a cluster the pipeline is cut into slot
//! runs (the index, then the script with its `WAIT`); an error in any run,
//! or replies of an unexpected shape, fail the whole batch as
//! [`AppendError::Redis`]: maybe stored, never acked.
//!
//! The ids of a batch's messages are also written to their room's message
//! index, in the same pipeline just before the script (one round trip on a
//! single Redis; on a cluster the index lives in the room's slot, not the
//! shard's, so it is a run of its own), so an `edit`, `delete`, `react` or
//! `reply_to` sent right after the ack finds it even before a worker has
//! persisted it. An id surely not stored (a repeat's fresh id, a refusal) is
//! removed from the index again; after a Redis error the batch may have been
//! stored, and its ids stay.
//!
//! With a pre-publish hook (`PUBLISH_HOOK_URL`), a batch's messages and
//! edits are screened first ([`super::screen`]) and what the hook lets
//! through is stored in the batch's order: every door appends here, so none
//! skips the hook.
//!
//! Concurrent appends from many connections share the multiplexed
//! connections, which pipelines them under load with no added wait at idle.
//! With `ACK_AFTER_REPLICAS` they share the connections kept for requests
//! ending with `WAIT` instead ([`RedisHandle::pipe_waited`]), so a slow
//! replica holds back appends, never heartbeats or probes.

use std::sync::LazyLock;
use std::time::Instant;

use chat_shared::config::ReplicaAck;
use chat_shared::envelope::STREAM_FIELD;
use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_shared::metrics as m;
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

use super::draft::Stamped;
pub use super::draft::{AppendError, AppendLimits, Appended, Draft};
use super::screen;
use crate::hook::PublishHook;

/// KEYS[1]: the shard's stream; KEYS[2..]: the dedupe markers of the
/// messages that have a `client_id`.
/// ARGV[1]: field, ARGV[2]: backlog cap (0 = none), ARGV[3]: window secs, then
/// four values per message: entry, id, timestamp, index of its marker in KEYS
/// (0 = none).
/// Returns one answer per message: `1` appended, `"<id> <timestamp>"` a
/// repeat, `-1` refused (backlog full), `-2` not tried (behind a refusal).
const APPEND_LUA: &str = r#"
local cap = tonumber(ARGV[2])
local out = {}
local refused = false
for i = 4, #ARGV, 4 do
  local marker = tonumber(ARGV[i + 3])
  local answer = -2
  if not refused then
    local prev = false
    if marker > 0 then prev = redis.call('GET', KEYS[marker]) end
    if prev then
      -- A repeat writes too: see "Replicas" in the module docs.
      local ttl = redis.call('PTTL', KEYS[marker])
      if ttl > 0 then redis.call('PEXPIRE', KEYS[marker], ttl) end
      answer = prev
    elseif cap > 0 and redis.call('XLEN', KEYS[1]) >= cap then
      answer = -1
      refused = true
    else
      redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[i])
      if marker > 0 then
        redis.call('SET', KEYS[marker], ARGV[i + 1] .. ' ' .. ARGV[i + 2], 'EX', tonumber(ARGV[3]))
      end
      answer = 1
    end
  end
  out[#out + 1] = answer
end
return out
"#;

/// The loaded [`APPEND_LUA`] (its SHA is computed once).
static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_LUA));

/// The script's answers (exactly one per message) and, with
/// `ACK_AFTER_REPLICAS`, `WAIT`'s count of confirming replicas (`u32::MAX`
/// without: nothing to wait for). Replies of any other shape are an error:
/// nothing is acked on a guess (on a cluster the pipeline is cut into slot
/// runs, and a reply missing from one of them must not pass for a success).
fn parse_replies(
    replies: Vec<redis::Value>,
    messages: usize,
    replica_ack: Option<ReplicaAck>,
) -> Result<(Vec<redis::Value>, u32), RedisError> {
    let bad = |e: redis::ParsingError| RedisError::Command(e.into());
    let wanted = if replica_ack.is_some() { 2 } else { 1 };
    if replies.len() != wanted {
        return Err(bad(
            "the append pipeline returned an unexpected number of replies".into(),
        ));
    }
    let mut replies = replies.into_iter();
    let script = replies.next().unwrap_or(redis::Value::Nil);
    let answers: Vec<redis::Value> = match script {
        redis::Value::Array(answers) if answers.len() == messages => answers,
        _ => return Err(bad("the append script returned an unexpected reply".into())),
    };
    let confirmed = match replies.next() {
        Some(count) => redis::FromRedisValue::from_redis_value(count).map_err(bad)?,
        None => u32::MAX,
    };
    Ok((answers, confirmed))
}

/// What one answer of the script means for its message.
fn outcome(stamped: &Stamped, answer: &redis::Value) -> Result<Appended, AppendError> {
    match answer {
        redis::Value::Int(1) => Ok(Appended {
            id: stamped.entry.id.clone(),
            timestamp: stamped.entry.timestamp.clone(),
            repeat: false,
        }),
        redis::Value::Int(-1) => {
            metrics::counter!(m::GW_BACKLOG_REFUSALS).increment(1);
            Err(AppendError::BacklogFull)
        }
        redis::Value::BulkString(prev) => {
            metrics::counter!(m::GW_APPEND_REPEATS).increment(1);
            let prev = String::from_utf8_lossy(prev);
            let (id, timestamp) = prev.split_once(' ').unwrap_or((&prev, ""));
            Ok(Appended {
                id: id.to_owned(),
                timestamp: timestamp.to_owned(),
                repeat: true,
            })
        }
        _ => Err(AppendError::AfterFailure),
    }
}

/// Sends the append pipeline once: over the connections kept for `WAIT`
/// when it ends with one, else over a shared connection.
async fn send(
    redis: &RedisHandle,
    pipe: &redis::Pipeline,
    waited: bool,
) -> Result<Vec<redis::Value>, RedisError> {
    if waited {
        redis.pipe_waited(pipe).await
    } else {
        redis.pipe_once(pipe).await
    }
}

/// Stamps one draft with a UUID v7 and the current time and appends it.
///
/// # Errors
/// As for [`append_batch`].
pub async fn append(
    redis: &RedisHandle,
    limits: AppendLimits,
    hook: Option<&PublishHook>,
    room: &RoomId,
    draft: Draft,
) -> Result<Appended, AppendError> {
    append_batch(redis, limits, hook, room, vec![draft])
        .await
        .pop()
        .unwrap_or(Err(AppendError::Redis))
}

/// Lifetime of a message index no worker has persisted to (so none has given
/// it the history's TTL): a day, far beyond any dedupe window or backlog.
pub const ORPHAN_INDEX_TTL_SECS: u64 = 86_400;

/// Screens the drafts (all of `room`) with the pre-publish `hook`, if any,
/// then stamps what it lets through and appends it in order in one round
/// trip; returns one result per draft, in order. This is the one way
/// messages and room events are stored.
///
/// A message is stored if and only if its result is `Ok`, except after
/// [`AppendError::Redis`] (the whole batch may or may not be stored) and
/// [`AppendError::NotReplicated`] (stored, not confirmed by replicas): a
/// resend with the same `client_id` is then deduplicated.
pub async fn append_batch(
    redis: &RedisHandle,
    limits: AppendLimits,
    hook: Option<&PublishHook>,
    room: &RoomId,
    drafts: Vec<Draft>,
) -> Vec<Result<Appended, AppendError>> {
    let Some(hook) = hook else {
        return store_batch(redis, limits, room, drafts).await;
    };
    let screened = screen::screen(hook, room, drafts).await;
    let stored = store_batch(redis, limits, room, screened.passed).await;
    screen::merge(screened.refusals, stored)
}

/// Stamps the drafts and appends them in order in one round trip (one
/// script call); one result per draft, in order.
async fn store_batch(
    redis: &RedisHandle,
    limits: AppendLimits,
    room: &RoomId,
    drafts: Vec<Draft>,
) -> Vec<Result<Appended, AppendError>> {
    if drafts.is_empty() {
        return Vec::new();
    }
    let batch: Vec<Stamped> = drafts.into_iter().map(|d| Stamped::new(room, d)).collect();
    let shard = keys::shard_of(room, limits.shards);
    let mut inv = APPEND.key(keys::stream(shard));
    inv.arg(STREAM_FIELD)
        .arg(limits.backlog_max)
        .arg(limits.dedupe_window_secs.max(1));
    let mut markers = 1;
    for stamped in &batch {
        let entry = &stamped.entry;
        inv.arg(entry.encode()).arg(&entry.id).arg(&entry.timestamp);
        match &stamped.client_id {
            Some(client_id) => {
                markers += 1;
                // The sender: its user id when authenticated, else its name.
                inv.key(keys::dedupe(shard, room, entry.user_key(), client_id));
                inv.arg(markers);
            }
            None => {
                inv.arg(0);
            }
        }
    }
    let index: Vec<(&str, String)> = batch
        .iter()
        .filter(|s| s.indexed())
        .map(|s| (s.entry.id.as_str(), format!(":{}", s.entry.user_key())))
        .collect();
    let mut pipe = redis::pipe();
    if !index.is_empty() {
        pipe.hset_multiple(keys::message_index(room), &index)
            .ignore();
        // A room no worker ever persisted (workers down, the batch never
        // stored) must not keep its index forever: it gets a TTL unless it
        // has one (the worker's persist then sets `HISTORY_TTL`).
        pipe.cmd("EXPIRE")
            .arg(keys::message_index(room))
            .arg(ORPHAN_INDEX_TTL_SECS)
            .arg("NX")
            .ignore();
    }
    pipe.invoke_script(&inv);
    if let Some(ack) = limits.replica_ack {
        ack.add_wait(&mut pipe);
    }
    let started = Instant::now();
    // Not retried, by us or by the client library (`pipe_once`): without a
    // client_id, an append repeated after a lost reply would be stored
    // twice, and with one its repeat would be taken for a resend. With
    // `WAIT`, on a connection kept for it (`pipe_waited`): it blocks its
    // connection, and heartbeats on a shared one would stall behind it. A
    // NOSCRIPT answer means the script did not run: load it and send again.
    let waited = limits.replica_ack.is_some();
    let result = match send(redis, &pipe, waited).await {
        Err(e) if e.is_no_script() => {
            let loaded = redis
                .query::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(APPEND_LUA))
                .await;
            match loaded {
                Ok(_) => send(redis, &pipe, waited).await,
                Err(e) => Err(e),
            }
        }
        other => other,
    };
    metrics::histogram!(m::GW_APPEND_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::GW_APPEND_BATCH).record(batch.len() as f64);
    let results: Vec<Result<Appended, AppendError>> =
        match result.and_then(|replies| parse_replies(replies, batch.len(), limits.replica_ack)) {
            Ok((answers, confirmed)) => {
                let wanted = limits.replica_ack.map_or(0, |a| a.replicas);
                let results = batch
                    .iter()
                    .enumerate()
                    .map(|(i, s)| outcome(s, answers.get(i).unwrap_or(&redis::Value::Nil)));
                if confirmed < wanted {
                    metrics::counter!(m::GW_REDIS_ERRORS, "op" => "replica_ack").increment(1);
                    tracing::debug!(confirmed, wanted, "Append not confirmed by enough replicas");
                    results
                        .map(|r| r.and(Err(AppendError::NotReplicated)))
                        .collect()
                } else {
                    results.collect()
                }
            }
            Err(e) => {
                metrics::counter!(m::GW_REDIS_ERRORS, "op" => "append").increment(1);
                // Counted above; during an outage this would log once per batch.
                tracing::debug!(error = %e, messages = batch.len(), "Stream append failed");
                vec![Err(AppendError::Redis); batch.len()]
            }
        };
    // Ids surely not stored (refused, not tried, or a repeat's fresh id) come
    // out of the index again, off the answer's path: the sender never
    // learns those ids. After a Redis error the batch may have been stored
    // and persisted already, so its ids stay. A repeat that names this very
    // id is this message stored by an earlier run of the same script: its
    // entry stays (it is the stored message's).
    let unstored: Vec<String> = batch
        .iter()
        .zip(&results)
        .filter(|(s, r)| match r {
            Ok(a) => s.indexed() && a.repeat && a.id != s.entry.id,
            Err(AppendError::BacklogFull | AppendError::AfterFailure) => s.indexed(),
            // Screened out before the script (never indexed), or maybe stored.
            Err(AppendError::Rejected(_) | AppendError::HookFailed) => false,
            Err(AppendError::Redis | AppendError::NotReplicated) => false,
        })
        .map(|(s, _)| s.entry.id.clone())
        .collect();
    if !unstored.is_empty() {
        let redis = redis.clone();
        let index = keys::message_index(room);
        tokio::spawn(async move {
            let _ = redis
                .query::<()>(redis::cmd("HDEL").arg(index).arg(&unstored))
                .await;
        });
    }
    results
}
