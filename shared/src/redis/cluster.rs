//! Redis Cluster slots: which slot a key or a command touches, and shard
//! hash tags spread evenly over the slot space.
//!
//! A cluster pipeline may only touch one slot, so pipelines are cut into
//! runs of consecutive same-slot commands ([`command_slot`]) and the runs are
//! sent one after the other, which keeps the order a single-node pipeline
//! has. Stream shards use hash tags picked by slot ([`shard_tag`]): naive
//! `{shard-0}`…`{shard-15}` tags land wherever their CRC16 falls and can put
//! most shards on one master (centrifuge#554), while picked tags give each
//! shard its own sixteenth (for 16 shards) of the slot space, so contiguous
//! slot ranges per master get an even share.

use std::sync::OnceLock;

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The part of `key` that is hashed: the first non-empty `{…}`, else all.
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The cluster slot of `key` (CRC16/XMODEM of its hashed part, mod 16384).
pub fn slot_of(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hashed_part(key)) % SLOTS
}

/// The slot a command of ours touches: its first key. `None` for commands
/// without a key (`SCRIPT`, `PING`, `TIME`, a script called with no key…),
/// which may go anywhere.
pub fn command_slot(cmd: &redis::Cmd) -> Option<u16> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" => {
            let _body = args.next()?;
            let keys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
            (keys > 0).then(|| args.next().map(slot_of))?
        }
        b"SCRIPT" | b"PING" | b"TIME" | b"INFO" | b"CONFIG" | b"PUBLISH" | b"MULTI" | b"EXEC"
        | b"CLUSTER" | b"WAIT" => None,
        _ => args.next().map(slot_of),
    }
}

/// The slot-spread tags of the shards, when in cluster mode; decided once
/// per process.
static SPREAD: OnceLock<Vec<String>> = OnceLock::new();

/// Makes every later [`shard_tag`] a slot-spread tag for `shards` shards.
/// Called once at startup in cluster mode, before any key is built; every
/// process of a deployment must agree (they share `REDIS_CLUSTER` and
/// `STREAM_SHARDS`). The tags are computed here, once, not per key.
pub fn spread_shard_tags(shards: u32) {
    let shards = shards.max(1);
    let _ = SPREAD.set((0..shards).map(|n| spread_tag(n, shards)).collect());
}

/// The hash tag of stream shard `n` (without braces): `shard-<n>` on a
/// single Redis; on a cluster, `shard-<n>-<k>` with the smallest `k` whose
/// slot falls in the shard's share `[n·16384/N, (n+1)·16384/N)` of the slot
/// space.
pub fn shard_tag(shard: u32) -> String {
    match SPREAD.get() {
        None => format!("shard-{shard}"),
        Some(tags) => match tags.get(shard as usize) {
            Some(tag) => tag.clone(),
            None => spread_tag(shard, tags.len() as u32),
        },
    }
}

/// The slot-spread tag of shard `n` of `shards`.
pub fn spread_tag(shard: u32, shards: u32) -> String {
    let shards = u64::from(shards.max(1));
    let n = u64::from(shard) % shards;
    let lo = (n * u64::from(SLOTS) / shards) as u16;
    let hi = ((n + 1) * u64::from(SLOTS) / shards) as u16;
    // CRC16 spreads tags evenly: a share of 1/N is hit within ~N tries.
    (0u64..)
        .map(|k| format!("shard-{shard}-{k}"))
        .find(|tag| {
            let s = slot_of(tag.as_bytes());
            lo <= s && (s < hi || hi == lo)
        })
        .unwrap_or_else(|| format!("shard-{shard}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_eq!(
            slot_of(b"{}x"),
            slot_of(b"{}x"),
            "empty tag hashes the whole key"
        );
        assert_eq!(
            slot_of(b"chat:room:{messages:lobby}"),
            slot_of(b"messages:lobby")
        );
    }

    #[test]
    fn commands_route_by_their_first_key() {
        let mut c = redis::cmd("HSET");
        c.arg("chat:room:{messages:x}").arg("f").arg(1);
        assert_eq!(command_slot(&c), Some(slot_of(b"messages:x")));
        let mut e = redis::cmd("EVALSHA");
        e.arg("abc").arg(2).arg("messages:x").arg("other");
        assert_eq!(command_slot(&e), Some(slot_of(b"messages:x")));
        let mut none = redis::cmd("EVALSHA");
        none.arg("abc").arg(0).arg("argv");
        assert_eq!(command_slot(&none), None);
        assert_eq!(command_slot(&redis::cmd("PING")), None);
        let mut s = redis::cmd("SPUBLISH");
        s.arg("chat:deliver:g1").arg("x");
        assert_eq!(command_slot(&s), Some(slot_of(b"chat:deliver:g1")));
    }

    #[test]
    fn spread_tags_give_each_shard_its_share_of_the_slots() {
        for shards in [1u32, 3, 16, 64] {
            for n in 0..shards {
                let tag = spread_tag(n, shards);
                let slot = u64::from(slot_of(tag.as_bytes()));
                let share = u64::from(SLOTS) / u64::from(shards);
                assert!(
                    slot / share.max(1) == u64::from(n) || shards == 1,
                    "{tag}: slot {slot} outside shard {n}'s share of {shards}"
                );
                assert_eq!(tag, spread_tag(n, shards), "deterministic");
            }
        }
        // Three masters with even contiguous ranges get 16 shards 5/5/6.
        let mut per_master = [0; 3];
        for n in 0..16 {
            let slot = usize::from(slot_of(spread_tag(n, 16).as_bytes()));
            per_master[slot * 3 / usize::from(SLOTS)] += 1;
        }
        per_master.sort();
        assert_eq!(per_master, [5, 5, 6]);
    }
}
