//! The durable webhook queue: one stream per shard, `chat:webhooks:{shard-<n>}`.
//!
//! The shard task appends every routed record to its shard's outbox in the
//! same round trip that publishes the batch (`batch`), in one script that
//! then acks the batch's stream entries: an entry is acked only once its
//! records are in the outbox, so a worker killed at any point loses nothing;
//! at worst the batch is redone and its records are queued twice (same `id`
//! and `seq`). The
//! outbox shares the shard's hash tag, so on Redis Cluster it lives with the
//! shard's stream and lease and the fenced read script can check the lease.
//!
//! **Bound.** The append script adds records only while the outbox holds
//! fewer than `WEBHOOK_QUEUE_MAX` entries; the rest are dropped and the
//! script returns how many, counted as `queue_full`. Dropping the newest
//! (instead of trimming the oldest, which the sender may be posting) keeps
//! the count exact and never removes an entry under the sender's feet.
//! The sender deletes (`XACK` + `XDEL`) what it delivered or gave up on, so
//! the stream's length is the queue's depth.

use chat_shared::envelope::Delivery;
use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};
use redis::Script;

/// Field of an outbox entry holding the stored record JSON, verbatim.
pub(crate) const RECORD_FIELD: &str = "record";
/// Field of an outbox entry holding when the record was persisted (µs).
pub(crate) const PERSISTED_FIELD: &str = "at";

/// KEYS: outbox, shard stream. ARGV: cap, persisted time (µs), the shard
/// stream's group, the number of records `n`, the `n` records, then the
/// stream ids to ack. Appends the records while the outbox is below the cap,
/// then acks the ids; returns how many records were dropped. A failing
/// `XADD` (out of memory) aborts the script before the ack, so the entries
/// stay pending and the batch is redone.
const APPEND_LUA: &str = r#"
local cap, n = tonumber(ARGV[1]), tonumber(ARGV[4])
local len = redis.call('XLEN', KEYS[1])
local dropped = 0
for i = 5, 4 + n do
  if len >= cap then
    dropped = dropped + 1
  else
    redis.call('XADD', KEYS[1], '*', 'record', ARGV[i], 'at', ARGV[2])
    len = len + 1
  end
end
local first = 5 + n
while first <= #ARGV do
  local last = math.min(first + 999, #ARGV)
  redis.call('XACK', KEYS[2], ARGV[3], unpack(ARGV, first, last))
  first = last + 1
end
return dropped
"#;

/// The append script (its SHA is computed once).
pub(crate) fn append_script() -> Script {
    Script::new(APPEND_LUA)
}

/// Where a batch's records go when webhooks are on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outbox<'a> {
    /// The append script, loaded on the shard's connection.
    pub(crate) script: &'a Script,
    /// The shard's outbox key.
    pub(crate) key: &'a str,
    /// `WEBHOOK_QUEUE_MAX`.
    pub(crate) cap: u64,
}

impl Outbox<'_> {
    /// Adds the append of `records` (persisted at `at_us`) to the outbox,
    /// then the ack of the shard stream's `ids`, as one script call; its
    /// reply is the number of records dropped. Adds nothing (and returns
    /// `false`) when there is neither a record nor an id.
    pub(crate) fn add_append_and_ack(
        &self,
        pipe: &mut redis::Pipeline,
        records: &[Delivery],
        at_us: i64,
        stream: &str,
        ids: &[String],
    ) -> bool {
        if records.is_empty() && ids.is_empty() {
            return false;
        }
        let mut inv = self.script.key(self.key);
        inv.key(stream)
            .arg(self.cap)
            .arg(at_us)
            .arg(keys::CONSUMER_GROUP)
            .arg(records.len());
        for d in records {
            inv.arg(&d.record);
        }
        inv.arg(ids);
        pipe.invoke_script(&inv);
        true
    }
}

/// Acks and deletes delivered (or abandoned) entries of `outbox`.
pub(crate) fn add_done(pipe: &mut redis::Pipeline, outbox: &str, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    pipe.xack(outbox, keys::WEBHOOK_GROUP, ids).ignore();
    pipe.xdel(outbox, ids).ignore();
}

/// Records waiting in the outboxes of `shards`.
///
/// # Errors
/// Fails when Redis does not answer.
pub(crate) async fn depth(redis: &RedisHandle, shards: &[u32]) -> Result<u64, RedisError> {
    if shards.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for &s in shards {
        pipe.xlen(keys::webhook_outbox(s));
    }
    let lens: Vec<u64> = redis.pipe(&pipe).await?;
    Ok(lens.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_sends_cap_time_group_records_then_ids() {
        let script = append_script();
        let outbox = Outbox {
            script: &script,
            key: "chat:webhooks:{shard-1}",
            cap: 7,
        };
        let d = |r: &str| Delivery {
            room: "a".into(),
            seq: 1,
            epoch: "e".into(),
            record: r.into(),
            stamped_us: 0,
        };
        let mut pipe = redis::pipe();
        assert!(!outbox.add_append_and_ack(&mut pipe, &[], 5, "s", &[]));
        let ids = ["1-0".to_owned()];
        assert!(outbox.add_append_and_ack(&mut pipe, &[d("{\"a\":1}"), d("{}")], 5, "s", &ids));
        let cmd = pipe.cmd_iter().next().unwrap();
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(args[0], "EVALSHA");
        assert_eq!(
            args[2..],
            [
                "2",
                "chat:webhooks:{shard-1}",
                "s",
                "7",
                "5",
                keys::CONSUMER_GROUP,
                "2",
                "{\"a\":1}",
                "{}",
                "1-0"
            ]
        );
    }
}
