//! Issue 23 path 4: a janitor sweep cut off half-way must not silence a
//! live gateway.
//!
//! A gateway holding many rooms is frozen (SIGSTOP) until the janitor judges
//! it dead and starts removing its entries room by room. The sweep is cut
//! off in the middle, deterministically: the fault proxy between the janitor
//! worker and Redis holds (or fails) the eviction of one room chosen in the
//! middle of the sweep's order, and the worker is SIGKILLed there (or gets a
//! Redis error there). The gateway then resumes (SIGCONT) and beats again
//! before any janitor finishes the sweep; other workers take over. Every
//! socket of the resumed gateway must get a message sent afterwards.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chat_shared::ids::RoomId;
use chat_shared::keys;
use chat_tests::fault_proxy::FaultProxy;
use chat_tests::http_request;
use common::*;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

/// Rooms of the frozen gateway, one socket each (as in the outside run).
const ROOMS: usize = 250;
const API_KEY: &str = "sweep-key";

fn worker_env(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    // A long command timeout: the held eviction must not time out (and the
    // sweep go on) before the test has killed the worker.
    [
        FAST_WORKER,
        &[("REDIS_TIMEOUT_MS", "10000"), ("PRESENCE_EVENTS", "false")],
        extra,
    ]
    .concat()
}

fn room(i: usize) -> String {
    format!("sweep-{i}")
}

/// Whether `gw` has a count entry in `room`'s gateway hash (workers publish
/// the room's messages to it).
async fn registered(c: &mut MultiplexedConnection, room: &str, gw: &str) -> bool {
    let r = RoomId::parse(room).unwrap();
    c.hexists(keys::room_gateways(&r), gw).await.unwrap()
}

/// How many of `rooms` lack `gw`'s entry.
async fn unregistered(c: &mut MultiplexedConnection, rooms: &[String], gw: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in rooms {
        if !registered(c, r, gw).await {
            out.push(r.clone());
        }
    }
    out
}

/// The order in which a sweep walks `rooms:active` (`SSCAN`, 200 a page,
/// as the janitor does), restricted to `ours`.
async fn sweep_order(c: &mut MultiplexedConnection, ours: &[String]) -> Vec<String> {
    let mut cursor = 0u64;
    let mut order: Vec<String> = Vec::new();
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(keys::ROOMS_ACTIVE)
            .arg(cursor)
            .arg("COUNT")
            .arg(200)
            .query_async(c)
            .await
            .unwrap();
        for r in page {
            if ours.contains(&r) && !order.contains(&r) {
                order.push(r);
            }
        }
        if next == 0 {
            return order;
        }
        cursor = next;
    }
}

/// The bytes of the janitor's eviction script call for `gw` in `room`: its
/// last key (the room's presence users) followed by mode `all` and `gw`.
fn eviction_pattern(room: &str, gw: &str) -> Vec<u8> {
    let r = RoomId::parse(room).unwrap();
    let users = keys::presence_users(&r);
    format!("{users}\r\n$3\r\nall\r\n${}\r\n{gw}\r\n", gw.len()).into_bytes()
}

/// The bytes of any eviction script call for `gw`.
fn any_eviction(gw: &str) -> Vec<u8> {
    format!("\r\n$3\r\nall\r\n${}\r\n{gw}\r\n", gw.len()).into_bytes()
}

/// Redis's clock, in ms.
async fn redis_ms(c: &mut MultiplexedConnection) -> i64 {
    let (s, us): (i64, i64) = redis::cmd("TIME").query_async(c).await.unwrap();
    s * 1000 + us / 1000
}

/// Publishes `text` to `room` through `gw`'s HTTP API; waits for 201.
async fn publish(gw: &Gateway, room: &str, text: &str) {
    let body = serde_json::json!({"message": text, "username": "bot"}).to_string();
    let auth = format!("Bearer {API_KEY}");
    eventually("the publish is accepted", DEADLINE, || {
        let (auth, body) = (auth.clone(), body.clone());
        async move {
            let (status, _) = http_request(
                &gw.addr(),
                "POST",
                &format!("/rooms/{room}/messages"),
                &[("Authorization", auth.as_str())],
                &body,
            )
            .await
            .ok()?;
            (status == 201).then_some(())
        }
    })
    .await;
}

/// Waits until `c` has seen a frame carrying `text` (live, or in a history
/// catch-up); false at the deadline.
async fn hears(c: &mut Client, text: &str, within: Duration) -> bool {
    let needle = format!("\"{text}\"");
    let end = tokio::time::Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match c.next_json_within(left).await {
            Some(v) if v.to_string().contains(&needle) => return true,
            Some(_) => continue,
            None => return false,
        }
    }
}

/// Every socket hears a message published to its room now; returns the
/// rooms whose socket stayed silent.
async fn silent_rooms(sender: &Gateway, clients: &mut [Client], tag: &str) -> Vec<String> {
    for i in 0..clients.len() {
        publish(sender, &room(i), &format!("{tag}-{i}")).await;
    }
    let heard = join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| async move { hears(c, &format!("{tag}-{i}"), DEADLINE).await }),
    )
    .await;
    heard
        .iter()
        .enumerate()
        .filter(|(_, h)| !**h)
        .map(|(i, _)| room(i))
        .collect()
}

/// What a cut-off sweep test has set up.
struct Setup {
    redis: Redis,
    proxy: FaultProxy,
    janitor: Worker,
    frozen: Gateway,
    sender: Gateway,
    clients: Vec<Client>,
    rooms: Vec<String>,
    /// The room whose eviction is held or failed, and how many of the
    /// frozen gateway's rooms the sweep evicts before it.
    cut_at: (String, usize),
}

/// Redis, a janitor worker behind the fault proxy, the gateway to freeze
/// with one socket in each of [`ROOMS`] rooms (each room with one message
/// of history, heard by its socket), and a sender gateway.
async fn setup() -> Setup {
    let redis = Redis::start().await;
    let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let via_proxy = format!("redis://{}", proxy.addr());
    let janitor = start_worker(&via_proxy, "wa", &worker_env(&[])).await;
    let mut c = redis.conn().await;
    eventually("worker wa holds the janitor lease", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let holder: Option<String> = c.get(keys::JANITOR_LEASE).await.ok()?;
            (holder.as_deref() == Some("wa")).then_some(())
        }
    })
    .await;
    let gw_env = [FAST_GW, &[("PRESENCE_EVENTS", "false")]].concat();
    let frozen = start_gateway(&redis.url(), "gfrozen", &gw_env).await;
    let sender_env = [gw_env.as_slice(), &[("API_KEYS", API_KEY)]].concat();
    let sender = start_gateway(&redis.url(), "gsender", &sender_env).await;
    let rooms: Vec<String> = (0..ROOMS).map(room).collect();
    let mut clients = Vec::with_capacity(ROOMS);
    for r in &rooms {
        clients.push(Client::join(&frozen.ws_url(&format!("room={r}"))).await.0);
    }
    eventually("every socket is registered", DEADLINE, || {
        let (mut c, rooms) = (c.clone(), rooms.clone());
        async move {
            unregistered(&mut c, &rooms, "gfrozen")
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    // History keeps every room in rooms:active through the sweep, so the
    // walk's order stays the one read here; and delivery works.
    let silent = silent_rooms(&sender, &mut clients, "before").await;
    assert!(silent.is_empty(), "silent before any fault: {silent:?}");
    let order = sweep_order(&mut c, &rooms).await;
    assert_eq!(order.len(), ROOMS);
    let at = ROOMS / 2;
    Setup {
        redis,
        proxy,
        janitor,
        frozen,
        sender,
        clients,
        rooms,
        cut_at: (order[at].clone(), at),
    }
}

/// Freezes the gateway and waits until the sweep has evicted exactly the
/// rooms before the cut (it cannot pass the held or failed eviction).
async fn freeze_until_cut(s: &Setup) {
    s.frozen.proc.signal("STOP");
    let (_, before) = &s.cut_at;
    let c = s.redis.conn().await;
    eventually(
        "the sweep evicted the rooms before the cut",
        Duration::from_secs(30),
        || {
            let (mut c, rooms) = (c.clone(), s.rooms.clone());
            async move { (unregistered(&mut c, &rooms, "gfrozen").await.len() >= *before).then_some(()) }
        },
    )
    .await;
}

/// Resumes the frozen gateway and waits for its first heartbeat after that.
async fn thaw(s: &Setup) {
    let mut c = s.redis.conn().await;
    let t = redis_ms(&mut c).await;
    s.frozen.proc.signal("CONT");
    eventually("the resumed gateway beats", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let beat: Option<i64> = c.hget(keys::GATEWAYS, "gfrozen").await.ok()?;
            beat.is_some_and(|b| b >= t).then_some(())
        }
    })
    .await;
}

/// The end state both tests assert: /readyz green and every socket hears
/// a message sent after the gateway resumed.
async fn assert_every_socket_hears(s: &mut Setup) {
    let mut c = s.redis.conn().await;
    let (status, _) = chat_tests::http_get(&s.frozen.addr(), "/readyz")
        .await
        .unwrap();
    let silent = silent_rooms(&s.sender, &mut s.clients, "after").await;
    let missing = unregistered(&mut c, &s.rooms, "gfrozen").await;
    assert!(
        silent.is_empty(),
        "{} of {ROOMS} sockets of the resumed gateway heard nothing (readyz {status}); \
         {} rooms lack its registration: {missing:?}",
        silent.len(),
        missing.len(),
    );
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_janitor_killed_mid_sweep_does_not_silence_the_gateway_it_was_evicting() {
    let mut s = setup().await;
    let (cut_room, before) = s.cut_at.clone();
    // Hold the eviction of the room in the middle of the walk.
    let _held = s.proxy.stall_next(
        &eviction_pattern(&cut_room, "gfrozen"),
        Duration::from_secs(600),
    );
    freeze_until_cut(&s).await;
    let mut c = s.redis.conn().await;
    let evicted = unregistered(&mut c, &s.rooms, "gfrozen").await;
    assert_eq!(evicted.len(), before, "the sweep stopped at the held room");
    assert!(!evicted.contains(&cut_room));
    // SIGKILL the janitor there; the held command dies with its connection.
    s.janitor.proc.kill9();
    s.proxy.cut_all();
    thaw(&s).await;
    // Other workers take the shards and the janitor lease over.
    let _wb = start_worker(&s.redis.url(), "wb", &worker_env(&[])).await;
    let _wc = start_worker(&s.redis.url(), "wc", &worker_env(&[])).await;
    eventually("another worker holds the janitor lease", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let holder: Option<String> = c.get(keys::JANITOR_LEASE).await.ok()?;
            matches!(holder.as_deref(), Some("wb" | "wc")).then_some(())
        }
    })
    .await;
    assert_every_socket_hears(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_error_mid_sweep_does_not_silence_the_gateway_being_evicted() {
    let mut s = setup().await;
    let (cut_room, _) = s.cut_at.clone();
    let mut failed = s.proxy.fail_next(
        &eviction_pattern(&cut_room, "gfrozen"),
        "ERR injected by the test",
    );
    freeze_until_cut(&s).await;
    failed.wait(DEADLINE).await;
    // Hold the janitor's next lease renewal, so its next sweep cannot start
    // before the gateway has resumed and beaten.
    let mut held = s
        .proxy
        .stall_next(keys::JANITOR_LEASE.as_bytes(), Duration::from_secs(3));
    let evictions = s.proxy.seen(&any_eviction("gfrozen"));
    thaw(&s).await;
    assert_eq!(
        s.proxy.seen(&any_eviction("gfrozen")),
        evictions,
        "setup: no eviction ran between the error and the gateway's first beat"
    );
    held.wait(DEADLINE).await;
    // The same worker sweeps again, now with the gateway alive.
    eventually("the janitor sweeps again", DEADLINE, || {
        let proxy = &s.proxy;
        async move { (proxy.seen(b"HGETALL\r\n$13\r\nchat:gateways") > 0).then_some(()) }
    })
    .await;
    assert_every_socket_hears(&mut s).await;
}
