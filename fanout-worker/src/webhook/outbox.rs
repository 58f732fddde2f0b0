//! The durable webhook queue: one stream per shard, `chat:webhooks:{shard-<n>}`.
//!
//! The shard task appends every routed record to its shard's outbox in the
//! same round trip that publishes the batch and acks its stream entries
//! (`batch`), so a record acked off the shard stream is already in the
//! outbox: a worker killed at any point loses nothing, at worst the batch is
//! redone and its records are queued twice (same `id` and `seq`). The
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

/// KEYS: outbox. ARGV: cap, persisted time (µs), then one record per
/// argument. Appends while the outbox is below the cap; returns how many
/// records were dropped.
const APPEND_LUA: &str = r#"
local cap = tonumber(ARGV[1])
local len = redis.call('XLEN', KEYS[1])
local dropped = 0
for i = 3, #ARGV do
  if len >= cap then
    dropped = dropped + 1
  else
    redis.call('XADD', KEYS[1], '*', 'record', ARGV[i], 'at', ARGV[2])
    len = len + 1
  end
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
    /// Adds the append of `records` (persisted at `at_us`) to `pipe`; its
    /// reply is the number of records dropped. Nothing is added for no
    /// records, so the pipeline then has no reply for it.
    pub(crate) fn add_append(
        &self,
        pipe: &mut redis::Pipeline,
        records: &[Delivery],
        at_us: i64,
    ) -> bool {
        if records.is_empty() {
            return false;
        }
        let mut inv = self.script.key(self.key);
        inv.arg(self.cap).arg(at_us);
        for d in records {
            inv.arg(&d.record);
        }
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
    fn append_sends_every_record_after_cap_and_time() {
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
        assert!(!outbox.add_append(&mut pipe, &[], 5));
        assert!(outbox.add_append(&mut pipe, &[d("{\"a\":1}"), d("{}")], 5));
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
            ["1", "chat:webhooks:{shard-1}", "7", "5", "{\"a\":1}", "{}"]
        );
    }
}
