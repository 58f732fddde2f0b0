//! The fault-injecting proxy (`chat_tests::fault_proxy`) against a real
//! redis-server: each fault does what the network-fault tests rely on.
//! Raw RESP over TCP is used where the client library's own behaviour
//! (timeouts, reconnects) would blur what the proxy did.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chat_tests::fault_proxy::{FaultProxy, Reply};
use common::*;
use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The RESP encoding of a command.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Reads until `want` bytes arrived, the peer closed or failed (`Err`), or
/// `within` passed (`Ok` with what came).
async fn read_some(s: &mut TcpStream, want: usize, within: Duration) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(got)
}

async fn start() -> (Redis, FaultProxy, redis::aio::MultiplexedConnection) {
    let redis = Redis::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let direct = redis.conn().await;
    (redis, proxy, direct)
}

async fn get(direct: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<i64> {
    direct.get(key).await.unwrap()
}

#[tokio::test]
async fn passes_pipelined_commands_and_replies_through_in_order() {
    let (_redis, proxy, _direct) = start().await;
    let client = redis::Client::open(format!("redis://{}", proxy.addr())).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let (a, b, n): (String, i64, Vec<String>) = redis::pipe()
        .set("k", "v")
        .ignore()
        .get("k")
        .incr("n", 5)
        .lrange("missing", 0, -1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((a.as_str(), b, n.len()), ("v", 5, 0));
    assert_eq!(proxy.seen(b"INCR"), 1);
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn a_stalled_command_runs_late_even_after_its_client_left() {
    let (_redis, proxy, mut direct) = start().await;
    let mut fired = proxy.stall_next(b"INCR", Duration::from_millis(800));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&resp(&["INCR", "late"])).await.unwrap();
    // The client gives up and goes away before the command reaches Redis.
    let early = read_some(&mut s, 1, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(early.is_empty(), "no reply while stalled");
    drop(s);
    assert_eq!(get(&mut direct, "late").await, None, "not run yet");
    fired.wait(DEADLINE).await;
    eventually("the stalled INCR ran", DEADLINE, || {
        let mut d = direct.clone();
        async move { (get(&mut d, "late").await == Some(1)).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_reset_after_a_command_drops_its_reply_but_the_command_ran() {
    let (_redis, proxy, mut direct) = start().await;
    let mut fired = proxy.reset_after_next(b"INCR", Reply::Drop);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&resp(&["PING"])).await.unwrap();
    assert_eq!(read_some(&mut s, 7, DEADLINE).await.unwrap(), b"+PONG\r\n");
    // Pipelined behind another command, in one write.
    let mut batch = resp(&["SET", "before", "1"]);
    batch.extend(resp(&["INCR", "once"]));
    s.write_all(&batch).await.unwrap();
    let after = read_some(&mut s, 100, DEADLINE).await;
    assert!(after.is_err(), "the client is reset, no reply: {after:?}");
    fired.wait(DEADLINE).await;
    assert_eq!(get(&mut direct, "once").await, Some(1));
    assert_eq!(proxy.seen(b"INCR"), 1);
}

#[tokio::test]
async fn a_reset_after_a_reply_delivers_it_then_cuts() {
    let (_redis, proxy, _direct) = start().await;
    let mut fired = proxy.reset_after_next(b"INCR", Reply::Deliver);
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&resp(&["INCR", "x"])).await.unwrap();
    assert_eq!(read_some(&mut s, 4, DEADLINE).await.unwrap(), b":1\r\n");
    fired.wait(DEADLINE).await;
    s.write_all(&resp(&["PING"])).await.ok();
    assert!(read_some(&mut s, 1, DEADLINE).await.is_err(), "cut");
}

#[tokio::test]
async fn an_injected_error_answers_in_place_and_redis_never_sees_the_command() {
    let (_redis, proxy, mut direct) = start().await;
    let mut fired = proxy.fail_next(b"INCR", "TRYAGAIN injected");
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut batch = resp(&["SET", "a", "1"]);
    batch.extend(resp(&["INCR", "a"]));
    batch.extend(resp(&["GET", "a"]));
    s.write_all(&batch).await.unwrap();
    let want = b"+OK\r\n-TRYAGAIN injected\r\n$1\r\n1\r\n";
    assert_eq!(read_some(&mut s, want.len(), DEADLINE).await.unwrap(), want);
    fired.wait(DEADLINE).await;
    assert_eq!(get(&mut direct, "a").await, Some(1));
    assert_eq!(proxy.seen(b"INCR"), 0);
}

#[tokio::test]
async fn latency_delays_every_command() {
    let (_redis, proxy, _direct) = start().await;
    proxy.set_latency(Duration::from_millis(200));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        s.write_all(&resp(&["PING"])).await.unwrap();
        assert_eq!(read_some(&mut s, 7, DEADLINE).await.unwrap(), b"+PONG\r\n");
        assert!(t.elapsed() >= Duration::from_millis(200));
    }
    proxy.set_latency(Duration::ZERO);
    let t = Instant::now();
    s.write_all(&resp(&["PING"])).await.unwrap();
    read_some(&mut s, 7, DEADLINE).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(200));
}

#[tokio::test]
async fn cut_and_refuse_drop_connections_for_a_while() {
    let (_redis, proxy, _direct) = start().await;
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(&resp(&["PING"])).await.unwrap();
    read_some(&mut s, 7, DEADLINE).await.unwrap();
    assert_eq!(proxy.cut_all(), 1);
    assert!(read_some(&mut s, 1, DEADLINE).await.is_err());

    proxy.refuse_for(Duration::from_millis(500));
    let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
    refused.write_all(&resp(&["PING"])).await.ok();
    assert!(read_some(&mut refused, 1, DEADLINE).await.is_err());
    let served = eventually("new connections served again", DEADLINE, || async {
        let mut s = TcpStream::connect(proxy.addr()).await.ok()?;
        s.write_all(&resp(&["PING"])).await.ok()?;
        read_some(&mut s, 7, Duration::from_millis(300)).await.ok()
    })
    .await;
    assert_eq!(served, b"+PONG\r\n");
}

#[tokio::test]
async fn dropping_subscribers_cuts_only_subscribed_connections() {
    let (_redis, proxy, mut direct) = start().await;
    let client = redis::Client::open(format!("redis://{}", proxy.addr())).unwrap();
    let mut plain = client.get_multiplexed_async_connection().await.unwrap();
    let mut sub = TcpStream::connect(proxy.addr()).await.unwrap();
    sub.write_all(&resp(&["SUBSCRIBE", "ch"])).await.unwrap();
    let confirm = read_some(&mut sub, 30, DEADLINE).await.unwrap();
    assert!(confirm.starts_with(b"*3\r\n$9\r\nsubscribe"), "{confirm:?}");
    // A message passes through the subscribed connection untouched.
    let _: i64 = direct.publish("ch", "hello").await.unwrap();
    let msg = read_some(&mut sub, 30, DEADLINE).await.unwrap();
    assert!(
        msg.windows(5).any(|w| w == b"hello"),
        "{}",
        String::from_utf8_lossy(&msg)
    );
    assert_eq!(proxy.drop_subscribers(), 1);
    assert!(read_some(&mut sub, 1, DEADLINE).await.is_err());
    let pong: String = redis::cmd("PING").query_async(&mut plain).await.unwrap();
    assert_eq!(pong, "PONG");
}
