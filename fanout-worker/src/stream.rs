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
//! **Why a fencing token as well.** The lease alone does not fence this
//! worker's own past: a read that stalled on the way (past `READ_BLOCK_MS`
//! plus `REDIS_TIMEOUT_MS`, so the client gave up and reconnected) can still
//! reach Redis later, while the lease is still this worker's, and move
//! entries that arrived meanwhile into the pending list behind the new
//! connection's back. The new connection's reads never see them, later
//! entries of their rooms are persisted first, and the next claim pass used
//! to find them older than their room's last persisted entry: acked away as
//! duplicates, never in history (issue 23, path 1). So every (re)connection
//! first takes a new token (`INCR` of `chat:fence:{shard-<n>}:<group>`,
//! only while the lease is ours) and every fenced call names its token: a
//! call of an older connection finds another token and does nothing. A call
//! that finds its own connection superseded (a stalled *take* ran late)
//! makes the task reconnect, which takes a newer token.
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

/// KEYS: lease, stream, fence. ARGV: worker id, group, count, `claim`,
/// `reclaim` or `read`, claim cursor, the connection's fencing token, and
/// for `reclaim` the least idle time (ms). `claim` takes every pending
/// entry; `reclaim` only other consumers' entries idle that long (this
/// worker's own, such as held entries, are not read again). Returns `{0}` when
/// the lease is not this worker's, `{2}` when the token is not the
/// current one (a newer connection took over); else
/// `{1, next claim cursor, entries}` for a claim and
/// `{1, newest id when nothing was new (else ""), entries}` for a read.
const FENCED_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
if redis.call('GET', KEYS[3]) ~= ARGV[6] then return {2} end
if ARGV[4] == 'reclaim' then
  local start = ARGV[5]
  if start == '0-0' then start = '-' end
  local rows = redis.call('XPENDING', KEYS[2], ARGV[2], 'IDLE', ARGV[7], start, '+', ARGV[3])
  local ids = {}
  for _, row in ipairs(rows) do
    if row[2] ~= ARGV[1] then ids[#ids + 1] = row[1] end
  end
  local nxt = '0-0'
  if #rows >= tonumber(ARGV[3]) then nxt = '(' .. rows[#rows][1] end
  if #ids == 0 then return {1, nxt, {}} end
  return {1, nxt, redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[1], ARGV[7], unpack(ids))}
end
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

/// KEYS: lease, fence. ARGV: worker id. Takes a new fencing token (returns
/// it) when the lease is this worker's; else returns 0 and changes nothing.
const TAKE_FENCE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('INCR', KEYS[2])
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
    take_fence: Script,
    trim: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            fenced: Script::new(FENCED_LUA),
            take_fence: Script::new(TAKE_FENCE_LUA),
            trim: Script::new(&crate::lua::with_prelude(
                crate::lua::STREAM_ID_CMP,
                TRIM_LUA,
            )),
        }
    }

    /// Loads the scripts, so that pipelines can use `EVALSHA`.
    pub(crate) async fn load(&self, c: &mut Conn) -> Result<(), RedisError> {
        self.fenced.load_async(c).await?;
        self.take_fence.load_async(c).await?;
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

/// A connection that reads a stream through the fence, with its token.
#[derive(Debug)]
pub(crate) struct Reader {
    /// The dedicated connection.
    pub(crate) conn: Conn,
    /// The fencing token this connection took; every fenced call names it.
    pub(crate) token: String,
}

/// Opens a dedicated connection for reading `target`: loads the stream
/// scripts and `extra` ones (so that pipelines can use `EVALSHA`), makes
/// sure the consumer group exists, and takes a new fencing token, so that
/// every request of an earlier connection that is still on its way does
/// nothing when it arrives. Every failure reopens the connection, so a
/// Redis that restarted (or flushed its scripts) gets the scripts again.
/// [`Fenced::NotHolder`] when the lease is not this worker's in Redis.
pub(crate) async fn open_group(
    ctx: &crate::Context,
    target: &Target,
    consumer: &str,
    scripts: &Scripts,
    extra: &[&Script],
) -> Result<Fenced<Reader>, RedisError> {
    let mut c = ctx.redis.dedicated(ctx.config.read_block()).await?;
    scripts.load(&mut c).await?;
    for script in extra {
        script.load_async(&mut c).await?;
    }
    let created: Result<(), redis::RedisError> = c
        .xgroup_create_mkstream(&target.stream, target.group, "0")
        .await;
    match created {
        Ok(()) => {}
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        Err(e) => return Err(e.into()),
    }
    let mut take = scripts.take_fence.key(&target.lease);
    take.key(&target.fence).arg(consumer);
    let token: i64 = take.invoke_async(&mut c).await?;
    Ok(if token == 0 {
        Fenced::NotHolder
    } else {
        Fenced::Held(Reader {
            conn: c,
            token: token.to_string(),
        })
    })
}

/// A stream, its consumer group, and the lease that fences reads of it
/// (same hash tag, so one script can check the lease and read).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The lease key.
    pub(crate) lease: String,
    /// The stream key.
    pub(crate) stream: String,
    /// The fencing token key of this stream's group.
    pub(crate) fence: String,
    /// The consumer group.
    pub(crate) group: &'static str,
}

impl Target {
    /// Shard `n`'s stream, read by the fan-out group.
    pub(crate) fn shard(n: u32) -> Self {
        Self {
            lease: keys::lease(n),
            stream: keys::stream(n),
            fence: keys::read_fence(n, keys::CONSUMER_GROUP),
            group: keys::CONSUMER_GROUP,
        }
    }

    /// Shard `n`'s webhook outbox, read by the webhook group under the
    /// shard's lease.
    pub(crate) fn webhooks(n: u32) -> Self {
        Self {
            lease: keys::lease(n),
            stream: keys::webhook_outbox(n),
            fence: keys::read_fence(n, keys::WEBHOOK_GROUP),
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
    /// The lease is this worker's but a newer connection took the fencing
    /// token (a stalled take ran late); nothing ran: reconnect.
    Superseded,
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

/// Which pending entries a claim pass takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimMode {
    /// Every pending entry, of any consumer (after a (re)connection).
    All,
    /// Only other consumers' entries idle for at least this long (the
    /// periodic pass: entries stranded elsewhere).
    Others(std::time::Duration),
}

/// Claims up to `count` pending entries of `target`'s group, from
/// `cursor`, as `mode` says.
pub(crate) async fn claim(
    r: &mut Reader,
    scripts: &Scripts,
    target: &Target,
    consumer: &str,
    cursor: &str,
    count: usize,
    mode: ClaimMode,
) -> Result<Fenced<Claimed>, RedisError> {
    let (name, idle) = match mode {
        ClaimMode::All => ("claim", 0),
        ClaimMode::Others(idle) => ("reclaim", idle.as_millis() as u64),
    };
    let reply = fenced(r, scripts, target, consumer, count, name, cursor, idle).await?;
    Ok(match reply {
        Fenced::NotHolder => Fenced::NotHolder,
        Fenced::Superseded => Fenced::Superseded,
        Fenced::Held((next, entries)) => Fenced::Held(Claimed {
            entries,
            next: (next != "0-0").then_some(next),
        }),
    })
}

/// Reads up to `count` new entries, without blocking.
pub(crate) async fn read(
    r: &mut Reader,
    scripts: &Scripts,
    target: &Target,
    consumer: &str,
    count: usize,
) -> Result<Fenced<Read>, RedisError> {
    let reply = fenced(r, scripts, target, consumer, count, "read", "", 0).await?;
    Ok(match reply {
        Fenced::NotHolder => Fenced::NotHolder,
        Fenced::Superseded => Fenced::Superseded,
        Fenced::Held((newest, entries)) if entries.is_empty() => Fenced::Held(Read::Idle(newest)),
        Fenced::Held((_, entries)) => Fenced::Held(Read::Entries(entries)),
    })
}

/// Runs the fenced script with `r`'s token.
#[allow(clippy::too_many_arguments)]
async fn fenced(
    r: &mut Reader,
    scripts: &Scripts,
    target: &Target,
    consumer: &str,
    count: usize,
    mode: &str,
    cursor: &str,
    min_idle_ms: u64,
) -> Result<Fenced<(String, Vec<StreamId>)>, RedisError> {
    let mut inv = scripts.fenced.key(&target.lease);
    inv.key(&target.stream)
        .key(&target.fence)
        .arg(consumer)
        .arg(target.group)
        .arg(count)
        .arg(mode)
        .arg(cursor)
        .arg(&r.token)
        .arg(min_idle_ms);
    let reply: Vec<Value> = inv.invoke_async(&mut r.conn).await?;
    parse_fenced(reply).map_err(|e| RedisError::Command(e.into()))
}

fn parse_fenced(reply: Vec<Value>) -> Result<Fenced<(String, Vec<StreamId>)>, redis::ParsingError> {
    let mut parts = reply.into_iter();
    let held: i64 = redis::from_redis_value(parts.next().unwrap_or(Value::Nil))?;
    match held {
        0 => return Ok(Fenced::NotHolder),
        2 => return Ok(Fenced::Superseded),
        _ => {}
    }
    let (Some(id), Some(entries)) = (parts.next(), parts.next()) else {
        return Err("fenced stream script returned too few values".into());
    };
    let id: String = redis::from_redis_value(id)?;
    let entries: StreamRangeReply = redis::from_redis_value(entries)?;
    Ok(Fenced::Held((id, entries.ids)))
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
        assert!(matches!(
            parse_fenced(vec![Value::Int(0)]).unwrap(),
            Fenced::NotHolder
        ));
        assert!(matches!(
            parse_fenced(vec![Value::Int(2)]).unwrap(),
            Fenced::Superseded
        ));
        let held = |r: Fenced<(String, Vec<StreamId>)>| match r {
            Fenced::Held(v) => v,
            other => panic!("not held: {other:?}"),
        };
        let (id, entries) = held(
            parse_fenced(vec![
                Value::Int(1),
                Value::BulkString(b"5-0".to_vec()),
                Value::Array(vec![entry("1-0"), entry("2-0")]),
            ])
            .unwrap(),
        );
        assert_eq!(id, "5-0");
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["1-0", "2-0"]);
        assert!(entries[0].contains_key("e"));
        let (id, entries) = held(
            parse_fenced(vec![
                Value::Int(1),
                Value::BulkString(Vec::new()),
                Value::Array(Vec::new()),
            ])
            .unwrap(),
        );
        assert!(id.is_empty() && entries.is_empty());
        assert!(parse_fenced(vec![Value::Int(1)]).is_err());
    }
}
