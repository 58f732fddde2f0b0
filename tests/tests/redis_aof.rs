//! The durable Redis of the nemesis survives a crash in the middle of a
//! transaction, twice (docs/architecture.md, "Nemesis"; found by the
//! nemesis at seed 1003): a Lua script's writes reach the append-only file
//! as one `MULTI`/`EXEC` block, and a SIGKILL can leave that block half
//! written. Redis 7.0's own repair (`aof-load-truncated yes`) cuts after
//! the last whole command and leaves an open `MULTI`; at the next load that
//! transaction swallows what was written after it (a script applied half)
//! or drops every acknowledged write after it. `repair_aof` (run before each
//! restart) cuts before the `MULTI` instead.
//!
//! The half-written block is planted in the file of a stopped server (a
//! SIGKILL at that byte cannot be timed), exactly as a crash leaves it.

use std::io::Write;
use std::path::{Path, PathBuf};

use chat_tests::redis_procs::{cli, DurableRedis};

/// The append-only file that receives new writes.
fn incr_aof(dir: &Path) -> PathBuf {
    let d = dir.join("appendonlydir");
    std::fs::read_dir(&d)
        .expect("the append-only dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .expect("an incr file")
}

/// A transaction cut by a crash: `MULTI`, one whole write, half an `EXEC`.
const HALF_WRITTEN: &[u8] =
    b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$7\r\napplied\r\n*1\r\n$4\r\nEX";

async fn crash_in_a_transaction(r: &mut DurableRedis) {
    r.kill();
    std::fs::OpenOptions::new()
        .append(true)
        .open(incr_aof(r.dir()))
        .expect("open the incr file")
        .write_all(HALF_WRITTEN)
        .expect("plant the half-written transaction");
    r.restart().await.expect("redis starts after the crash");
}

fn get(r: &DurableRedis, key: &str) -> String {
    cli(r.port, &["get", key]).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_a_half_written_transaction_survive_the_next_crash() {
    let base = std::env::temp_dir().join(format!("chat-test-aof-{}", std::process::id()));
    let mut r = DurableRedis::start(&base).await.expect("redis starts");
    assert_eq!(cli(r.port, &["set", "before", "1"]).trim(), "OK");
    crash_in_a_transaction(&mut r).await;
    assert_eq!(get(&r, "before"), "1");
    assert_eq!(get(&r, "half"), "", "the cut transaction is not applied");

    // Acknowledged after the repair, with appendfsync always: must survive.
    assert_eq!(cli(r.port, &["set", "acked", "1"]).trim(), "OK");
    r.kill();
    r.restart().await.expect("redis starts again");
    assert_eq!(get(&r, "acked"), "1", "an acked write was lost");
    assert_eq!(get(&r, "half"), "", "the cut transaction came back");

    // A script's writes (one MULTI/EXEC block in the file) after another
    // cut transaction: all of the script, none of the cut one.
    crash_in_a_transaction(&mut r).await;
    let script = "redis.call('set', KEYS[1], '1'); redis.call('set', KEYS[2], '1')";
    cli(r.port, &["eval", script, "2", "s1", "s2"]);
    r.kill();
    r.restart().await.expect("redis starts again");
    assert_eq!((get(&r, "s1"), get(&r, "s2")), ("1".into(), "1".into()));
    assert_eq!(get(&r, "half"), "", "the cut transaction was applied");
    r.kill();
    let _ = std::fs::remove_dir_all(&base);
}
