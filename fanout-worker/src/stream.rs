//! The shard task's commands on its stream: reads and claims fenced by the
//! shard's lease, a wake-up wait that delivers nothing, and a trim that never
//! removes a pending entry.
//!
//! **Why a fence.** `XREADGROUP` and `XAUTOCLAIM` put entries in the calling
//! consumer's pending list. If one of them ran after this worker's lease had
//! passed to another worker (a read blocked in Redis past a lapsed lease, a
//! request delayed on the way, a process paused), it would move an entry into
//! a pending list the new holder has already claimed, where nobody looks;
//! worse, once the new holder persisted a later entry of the same room, the
//! persistence script would take that entry for a duplicate. So both run in
//! one Lua call that first checks that the lease (same slot: `{shard-<n>}`)
//! names this worker. Entries then only ever reach the pending list of the
//! holder of the moment: everything a past holder got, it got before the
//! current holder acquired the lease, so the current holder's first claim
//! pass (before any read) takes it over, in id order.
//!
//! A script cannot block, so waiting for new entries is a plain `XREAD BLOCK`
//! from the newest id, which touches no group state: it can be dropped at any
//! moment (shutdown, handover) and leaves nothing behind. It only wakes the
//! shard task, which then reads through the fence. At idle that is two round
//! trips per `READ_BLOCK_MS`; under load every fenced read returns entries and
//! no wait happens.
//!
//! **Trimming.** After a batch is acked the stream is trimmed with
//! `XTRIM MINID ~`, but never past the oldest entry still pending in the
//! group (an entry left for a newer worker, or one of a failed batch): a
//! trimmed pending entry could no longer be claimed.

use chat_shared::keys;
use chat_shared::redis::Conn;
use chat_shared::redis::RedisError;
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Script, Value};
use tokio_util::sync::CancellationToken;

/// KEYS: lease, stream. ARGV: worker id, group, count, `claim` or `read`,
/// claim cursor. Returns `{0}` when the lease is not this worker's; else
/// `{1, next claim cursor, entries}` for a claim and
/// `{1, newest id when nothing was new (else ""), entries}` for a read.
const FENCED_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
if ARGV[4] == 'claim' then
  local r = redis.call('XAUTOCLAIM', KEYS[2], ARGV[2], ARGV[1], 0, ARGV[5], 'COUNT', ARGV[3])
  return {1, r[1], r[2]}
end
local r = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[1], 'COUNT', ARGV[3], 'STREAMS', KEYS[2], '>')
if r then return {1, '', r[1][2]} end
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if newest[1] then return {1, newest[1][1], {}} end
return {1, '0-0', {}}
"#;

/// KEYS: stream. ARGV: group, id of the newest entry acked. Trims below that
/// id or below the oldest pending entry, whichever is older. (Prefixed
/// with [`crate::lua::STREAM_ID_CMP`].)
const TRIM_LUA: &str = r#"
local min = ARGV[2]
local oldest = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1)
if oldest[1] and id_cmp(oldest[1][1], min) < 0 then min = oldest[1][1] end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', min)
"#;

/// The stream scripts (their SHAs are computed once).
#[derive(Debug)]
pub(crate) struct Scripts {
    fenced: Script,
    trim: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            fenced: Script::new(FENCED_LUA),
            trim: Script::new(&crate::lua::with_prelude(
                crate::lua::STREAM_ID_CMP,
                TRIM_LUA,
            )),
        }
    }

    /// Loads both scripts, so that pipelines can use `EVALSHA`.
    pub(crate) async fn load(&self, c: &mut Conn) -> Result<(), RedisError> {
        self.fenced.load_async(c).await?;
        self.trim.load_async(c).await?;
        Ok(())
    }

    /// Adds the trim after a batch whose newest acked entry is `last_acked`.
    pub(crate) fn add_trim(&self, pipe: &mut redis::Pipeline, stream: &str, last_acked: &str) {
        let mut inv = self.trim.key(stream);
        inv.arg(keys::CONSUMER_GROUP).arg(last_acked);
        pipe.invoke_script(&inv).ignore();
    }
}

/// Longest pause between attempts after a Redis failure (shard loop and
/// webhook sender).
pub(crate) const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a claim pass starts: the oldest pending entry.
pub(crate) const CLAIM_START: &str = "0-0";

/// Whether Redis answered `NOGROUP`: the consumer group is gone (Redis
/// restarted or was flushed); reopening recreates it.
pub(crate) fn is_nogroup(e: &RedisError) -> bool {
    matches!(e, RedisError::Command(re) if re.code() == Some("NOGROUP"))
}

/// Opens a dedicated connection for reading `target`: loads the stream
/// scripts and `extra` ones (so that pipelines can use `EVALSHA`), and
/// makes sure the consumer group exists. Every failure reopens the
/// connection, so a Redis that restarted (or flushed its scripts) gets the
/// scripts again.
pub(crate) async fn open_group(
    ctx: &crate::Context,
    target: &Target,
    scripts: &Scripts,
    extra: &[&Script],
) -> Result<Conn, RedisError> {
    let mut c = ctx.redis.dedicated(ctx.config.read_block()).await?;
    scripts.load(&mut c).await?;
    for script in extra {
        script.load_async(&mut c).await?;
    }
    let created: Result<(), redis::RedisError> = c
        .xgroup_create_mkstream(&target.stream, target.group, "0")
        .await;
    match created {
        Ok(()) => Ok(c),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(c),
        Err(e) => Err(e.into()),
    }
}

/// A stream, its consumer group, and the lease that fences reads of it
/// (same hash tag, so one script can check the lease and read).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The lease key.
    pub(crate) lease: String,
    /// The stream key.
    pub(crate) stream: String,
    /// The consumer group.
    pub(crate) group: &'static str,
}

impl Target {
    /// Shard `n`'s stream, read by the fan-out group.
    pub(crate) fn shard(n: u32) -> Self {
        Self {
            lease: keys::lease(n),
            stream: keys::stream(n),
            group: keys::CONSUMER_GROUP,
        }
    }

    /// Shard `n`'s webhook outbox, read by the webhook group under the
    /// shard's lease.
    pub(crate) fn webhooks(n: u32) -> Self {
        Self {
            lease: keys::lease(n),
            stream: keys::webhook_outbox(n),
            group: keys::WEBHOOK_GROUP,
        }
    }
}

/// The answer of a fenced command.
#[derive(Debug)]
pub(crate) enum Fenced<T> {
    /// The lease is this worker's; the command ran.
    Held(T),
    /// The lease is not (or no longer) this worker's; nothing ran.
    NotHolder,
}

/// One step of a claim pass.
#[derive(Debug)]
pub(crate) struct Claimed {
    /// Pending entries now this worker's, in id order.
    pub(crate) entries: Vec<StreamId>,
    /// Where the pass goes on; `None` when it has covered the pending list.
    pub(crate) next: Option<String>,
}

/// A read of new entries.
#[derive(Debug)]
pub(crate) enum Read {
    /// New entries, now pending for this worker, in id order.
    Entries(Vec<StreamId>),
    /// Nothing new; the newest id in the stream, to wait for entries after.
    Idle(String),
}

/// Claims up to `count` pending entries of any consumer of `target`'s
/// group, from `cursor`.
pub(crate) async fn claim(
    c: &mut Conn,
    scripts: &Scripts,
    target: &Target,
    consumer: &str,
    cursor: &str,
    count: usize,
) -> Result<Fenced<Claimed>, RedisError> {
    let reply = fenced(c, scripts, target, consumer, count, "claim", cursor).await?;
    Ok(match reply {
        None => Fenced::NotHolder,
        Some((next, entries)) => Fenced::Held(Claimed {
            entries,
            next: (next != "0-0").then_some(next),
        }),
    })
}

/// Reads up to `count` new entries, without blocking.
pub(crate) async fn read(
    c: &mut Conn,
    scripts: &Scripts,
    target: &Target,
    consumer: &str,
    count: usize,
) -> Result<Fenced<Read>, RedisError> {
    let reply = fenced(c, scripts, target, consumer, count, "read", "").await?;
    Ok(match reply {
        None => Fenced::NotHolder,
        Some((newest, entries)) if entries.is_empty() => Fenced::Held(Read::Idle(newest)),
        Some((_, entries)) => Fenced::Held(Read::Entries(entries)),
    })
}

/// Runs the fenced script; `None` when the lease is not this worker's.
async fn fenced(
    c: &mut Conn,
    scripts: &Scripts,
    target: &Target,
    consumer: &str,
    count: usize,
    mode: &str,
    cursor: &str,
) -> Result<Option<(String, Vec<StreamId>)>, RedisError> {
    let mut inv = scripts.fenced.key(&target.lease);
    inv.key(&target.stream)
        .arg(consumer)
        .arg(target.group)
        .arg(count)
        .arg(mode)
        .arg(cursor);
    let reply: Vec<Value> = inv.invoke_async(c).await?;
    parse_fenced(reply).map_err(|e| RedisError::Command(e.into()))
}

fn parse_fenced(reply: Vec<Value>) -> Result<Option<(String, Vec<StreamId>)>, redis::ParsingError> {
    let mut parts = reply.into_iter();
    let held: i64 = redis::from_redis_value(parts.next().unwrap_or(Value::Nil))?;
    if held == 0 {
        return Ok(None);
    }
    let (Some(id), Some(entries)) = (parts.next(), parts.next()) else {
        return Err("fenced stream script returned too few values".into());
    };
    let id: String = redis::from_redis_value(id)?;
    let entries: StreamRangeReply = redis::from_redis_value(entries)?;
    Ok(Some((id, entries.ids)))
}

/// Waits up to `block` for an entry after `after`, or until `cancel` fires.
/// A plain `XREAD`: it changes no group state, so dropping it is harmless.
pub(crate) async fn wait_for_entries(
    c: &mut Conn,
    stream: &str,
    after: &str,
    block: std::time::Duration,
    cancel: &CancellationToken,
) -> Result<(), RedisError> {
    let opts = StreamReadOptions::default()
        .count(1)
        .block(block.as_millis() as usize);
    let (keys, ids) = ([stream], [after]);
    let wait = c.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &opts);
    tokio::select! {
        r = wait => r.map(|_| ()).map_err(RedisError::from),
        _ = cancel.cancelled() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(vec![
                Value::BulkString(b"e".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ])
    }

    #[test]
    fn fenced_replies_parse() {
        assert_eq!(parse_fenced(vec![Value::Int(0)]).unwrap(), None);
        let (id, entries) = parse_fenced(vec![
            Value::Int(1),
            Value::BulkString(b"5-0".to_vec()),
            Value::Array(vec![entry("1-0"), entry("2-0")]),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(id, "5-0");
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1-0", "2-0"]);
        assert!(entries[0].contains_key("e"));
        let (id, entries) = parse_fenced(vec![
            Value::Int(1),
            Value::BulkString(Vec::new()),
            Value::Array(Vec::new()),
        ])
        .unwrap()
        .unwrap();
        assert!(id.is_empty() && entries.is_empty());
        assert!(parse_fenced(vec![Value::Int(1)]).is_err());
    }
}
