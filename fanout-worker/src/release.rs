//! `chat-fanout-worker release-held --shard <n>`: the operator's way out when
//! a shard holds entries of a newer envelope version and no newer worker is
//! coming (a rolled-back upgrade; see `hold`).
//!
//! Held entries stay pending, so the stream is not trimmed below them and,
//! once it reaches the gateways' `STREAM_BACKLOG_MAX`, every room of the
//! shard gets `unavailable`. This command finds the pending entries of the
//! shard that this version cannot decode but a newer one could, acks and
//! deletes them (they are lost: print them first with `--dry-run`), then
//! takes a new fencing token for the shard's group (`stream`), so that the
//! holder's next fenced call finds its connection superseded: it
//! reconnects, claims the pending list again with nothing held, and
//! processes the rooms' later entries it was holding back.

use chat_shared::config::RedisArgs;
use chat_shared::envelope::{NewerEntry, StreamEntry, STREAM_FIELD};
use chat_shared::keys;
use chat_shared::redis::{RedisError, RedisHandle};
use clap::Parser;
use redis::streams::StreamRangeReply;

/// Pending entries read per round trip.
const PAGE: usize = 500;

/// `chat-fanout-worker release-held`: acks and deletes the entries of a newer
/// envelope version a shard holds, so its rooms flow again.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-fanout-worker release-held")]
pub struct ReleaseArgs {
    /// The shard whose held entries to release.
    #[arg(long)]
    pub shard: u32,
    /// Only list the entries that would be released.
    #[arg(long)]
    pub dry_run: bool,
    /// Redis connection.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Releases shard `shard`'s held entries (or only finds them, with
/// `dry_run`); returns their ids, oldest first.
///
/// # Errors
/// Fails when Redis does; what was released by then stays released.
pub async fn release_held(
    redis: &RedisHandle,
    shard: u32,
    dry_run: bool,
) -> Result<Vec<String>, RedisError> {
    let stream = keys::stream(shard);
    let mut c = redis.dedicated(redis.timeout()).await?;
    let mut newer = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let rows: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(keys::CONSUMER_GROUP)
            .arg(&start)
            .arg("+")
            .arg(PAGE)
            .query_async(&mut c)
            .await?;
        let mut pipe = redis::pipe();
        for (id, ..) in &rows {
            pipe.xrange(&stream, id, id);
        }
        let entries: Vec<StreamRangeReply> = pipe.query_async(&mut c).await?;
        for e in entries.iter().flat_map(|r| &r.ids) {
            if let Some(redis::Value::BulkString(bytes)) = e.map.get(STREAM_FIELD) {
                if StreamEntry::decode(bytes).is_err() && NewerEntry::peek(bytes).is_some() {
                    newer.push(e.id.clone());
                }
            }
        }
        match rows.last() {
            Some((last, ..)) if rows.len() == PAGE => start = format!("({last}"),
            _ => break,
        }
    }
    if dry_run || newer.is_empty() {
        return Ok(newer);
    }
    for chunk in newer.chunks(PAGE) {
        let mut pipe = redis::pipe();
        pipe.xack(&stream, keys::CONSUMER_GROUP, chunk)
            .ignore()
            .xdel(&stream, chunk)
            .ignore();
        pipe.query_async::<()>(&mut c).await?;
    }
    // The holder reconnects and judges its pending list afresh.
    let _: i64 = redis::cmd("INCR")
        .arg(keys::read_fence(shard, keys::CONSUMER_GROUP))
        .query_async(&mut c)
        .await?;
    Ok(newer)
}

/// Runs the subcommand from `args` (the words after `release-held`); the
/// process's exit status: 0 done, 1 Redis failed, 64 bad arguments.
pub async fn main(args: impl Iterator<Item = String>) -> i32 {
    let args = match ReleaseArgs::try_parse_from(
        std::iter::once("chat-fanout-worker release-held".to_owned()).chain(args),
    ) {
        Ok(a) => a,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return chat_shared::config::EX_USAGE;
        }
        Err(e) => {
            let _ = e.print();
            return 0;
        }
    };
    let redis = match RedisHandle::new(&args.redis) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return chat_shared::config::EX_USAGE;
        }
    };
    match release_held(&redis, args.shard, args.dry_run).await {
        Ok(ids) => {
            for id in &ids {
                println!("{id}");
            }
            let verb = if args.dry_run {
                "would release"
            } else {
                "released"
            };
            eprintln!("shard {}: {verb} {} held entries", args.shard, ids.len());
            0
        }
        Err(e) => {
            eprintln!("error: shard {}: {e}", args.shard);
            1
        }
    }
}
