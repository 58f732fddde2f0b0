//! Standard Webhooks headers on the worker's webhook requests, against real
//! processes and a receiver on 127.0.0.1 that records every request: a
//! delivery signed with a `whsec_` secret verifies with the Python
//! `standardwebhooks` library (which refuses it tampered or replayed with an
//! old timestamp); the retries of one batch keep its `webhook-id` and get a
//! fresh `webhook-timestamp`; a batch re-sent by another worker after a
//! SIGKILL keeps its `webhook-id`; a `whsec_` secret that is not base64
//! stops the worker with 64.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::receiver::Receiver;
use common::webhooks::{check_standard_webhook, standardwebhooks_python};
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The example secret of the Standard Webhooks specification.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SHARDS: &str = "4";
const GW: &[(&str, &str)] = &[("STREAM_SHARDS", SHARDS)];

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Bytes,
    /// Unix seconds when it arrived.
    arrived: u64,
    /// What the receiver answered.
    status: StatusCode,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("request without {name}: {:?}", self.headers))
            .to_str()
            .unwrap()
    }
    fn id(&self) -> &str {
        self.header("webhook-id")
    }
    fn timestamp(&self) -> u64 {
        self.header("webhook-timestamp").parse().unwrap()
    }
}

/// The receiver's shared state.
struct Hook {
    /// Requests still to fail with 500, each after `fail_delay`.
    fail_next: AtomicUsize,
    fail_delay: Duration,
    seen: Mutex<Vec<Seen>>,
}

impl Hook {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// Waits for the first request answered 2xx and returns every request so far.
    async fn until_accepted(&self) -> Vec<Seen> {
        eventually("a webhook request is accepted", DEADLINE, || async {
            let seen = self.seen();
            seen.iter().any(|s| s.status.is_success()).then_some(seen)
        })
        .await
    }
}

/// A recording webhook receiver on a free loopback port.
impl Receiver<Hook> {
    /// Fails the first `fail` requests (each answered after `fail_delay`).
    async fn start(fail: usize, fail_delay: Duration) -> Self {
        let hook = Hook {
            fail_next: AtomicUsize::new(fail),
            fail_delay,
            seen: Mutex::new(Vec::new()),
        };
        Receiver::serve(hook, receive).await
    }
}

async fn receive(State(hook): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let arrived = unix_now();
    let fail = hook
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        tokio::time::sleep(hook.fail_delay).await;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    hook.seen.lock().unwrap().push(Seen {
        headers,
        body,
        arrived,
        status,
    });
    status
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Asserts both signatures of `seen`: `X-Chat-Signature` keyed with
/// `secret` as given, `webhook-signature` with `standard_key`.
fn assert_signed(seen: &Seen, secret: &str, standard_key: &[u8]) {
    let chat = format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &seen.body))
    );
    assert_eq!(seen.header("x-chat-signature"), chat);
    let signed = [
        seen.id().as_bytes(),
        b".",
        seen.header("webhook-timestamp").as_bytes(),
        b".",
        &seen.body,
    ]
    .concat();
    let standard = format!("v1,{}", STANDARD.encode(hmac_sha256(standard_key, &signed)));
    assert_eq!(seen.header("webhook-signature"), standard);
}

/// Redis, a receiver, worker `w1` and gateway `g1`; drops the gateway first.
struct Rig {
    gateway: Gateway,
    worker: Worker,
    receiver: Receiver<Hook>,
    redis: Redis,
}

/// The worker's environment for `receiver` with `secret`, plus `extra`.
fn worker_env<'a>(
    receiver: &'a Receiver<Hook>,
    secret: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let base = [
        ("STREAM_SHARDS", SHARDS),
        ("WEBHOOK_URL", receiver.url.as_str()),
        ("WEBHOOK_SECRET", secret),
    ];
    [&base[..], extra].concat()
}

impl Rig {
    async fn start(receiver: Receiver<Hook>, secret: &str, extra: &[(&str, &str)]) -> Self {
        let redis = Redis::start().await;
        let env = worker_env(&receiver, secret, extra);
        let worker = start_worker(&redis.url(), "w1", &env).await;
        let gateway = start_gateway(&redis.url(), "g1", GW).await;
        Self {
            gateway,
            worker,
            receiver,
            redis,
        }
    }

    /// Sends one message to `room` and waits for its ack.
    async fn say(&self, room: &str, text: &str) {
        let url = self.gateway.ws_url(&format!("room={room}&username=tester"));
        let (mut c, _) = Client::join(&url).await;
        c.send_text(&message_frame(room, text, "c1").to_string())
            .await;
        let ack = c.next_of_type("ack").await;
        assert_eq!(ack["data"]["client_id"], "c1", "{ack}");
    }
}

#[tokio::test]
async fn a_whsec_signed_delivery_verifies_with_the_standardwebhooks_library() {
    // First, so that a slow first install does not age the request.
    let python = standardwebhooks_python().await;
    let rig = Rig::start(Receiver::start(0, Duration::ZERO).await, WHSEC, &[]).await;
    rig.say("swh-verify", "hello").await;
    let seen = rig.receiver.hook.until_accepted().await;
    let req = &seen[0];
    let key = STANDARD
        .decode(WHSEC.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert_signed(req, WHSEC, &key);
    assert!(
        req.id().starts_with("msg_"),
        "webhook-id {:?} has the documented form",
        req.id()
    );
    let ts = req.timestamp();
    assert!(
        ts.abs_diff(req.arrived) <= 1,
        "timestamp {ts} vs arrival {}",
        req.arrived
    );

    check_standard_webhook(&python, WHSEC, &req.headers, &req.body).await;
}

#[tokio::test]
async fn retries_of_a_batch_keep_its_webhook_id_with_a_fresh_timestamp() {
    // The failed attempt takes over a second, so the retry (250 ms later)
    // falls in a later second and must carry a later timestamp.
    let secret = "plain-secret";
    let receiver = Receiver::start(1, Duration::from_millis(1100)).await;
    let rig = Rig::start(receiver, secret, &[("WEBHOOK_BACKOFF_MAX_MS", "250")]).await;
    rig.say("swh-retry", "again").await;
    let seen = rig.receiver.hook.until_accepted().await;
    let [first, retry] = &seen[..] else {
        panic!("expected one failure and one success, got {seen:?}");
    };
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.id(), first.id(), "a retry keeps the webhook-id");
    assert!(
        retry.timestamp() > first.timestamp(),
        "a retry is stamped anew: {} then {}",
        first.timestamp(),
        retry.timestamp()
    );
    for s in [first, retry] {
        // Any secret not starting with whsec_ is the key as raw bytes.
        assert_signed(s, secret, secret.as_bytes());
        assert!(s.timestamp().abs_diff(s.arrived) <= 1, "{s:?}");
    }
    assert_ne!(
        retry.header("webhook-signature"),
        first.header("webhook-signature")
    );
    assert_eq!(
        retry.header("x-chat-signature"),
        first.header("x-chat-signature")
    );
}

#[tokio::test]
async fn a_batch_resent_after_a_worker_sigkill_keeps_its_webhook_id() {
    // Every request fails until the first worker is gone.
    let receiver = Receiver::start(usize::MAX, Duration::ZERO).await;
    let fast = [("LEASE_TTL_MS", "1500"), ("WEBHOOK_BACKOFF_MAX_MS", "100")];
    let mut rig = Rig::start(receiver, WHSEC, &fast).await;
    rig.say("swh-kill", "pending").await;
    let hook = rig.receiver.hook.clone();
    eventually("the first worker tries twice", DEADLINE, || async {
        (hook.seen().len() >= 2).then_some(())
    })
    .await;
    rig.worker.proc.kill9();
    let failed = hook.seen();
    hook.fail_next.store(0, Ordering::SeqCst);
    let env = worker_env(&rig.receiver, WHSEC, &fast);
    let _w2 = start_worker(&rig.redis.url(), "w2", &env).await;
    let seen = hook.until_accepted().await;
    let accepted = seen.iter().find(|s| s.status.is_success()).unwrap();
    assert_eq!(accepted.body, failed[0].body);
    for s in &failed {
        assert_eq!(s.id(), failed[0].id());
    }
    assert_eq!(
        accepted.id(),
        failed[0].id(),
        "the next holder re-sends the pending batch with its webhook-id"
    );
    let key = STANDARD
        .decode(WHSEC.strip_prefix("whsec_").unwrap())
        .unwrap();
    assert_signed(accepted, WHSEC, &key);
}

#[tokio::test]
async fn a_whsec_secret_that_is_not_base64_stops_the_worker_with_64() {
    let env = [
        ("WEBHOOK_URL", "http://127.0.0.1:9/hook"),
        ("WEBHOOK_SECRET", "whsec_not*base64"),
    ];
    let (_, mut proc) = spawn_service(
        "chat-fanout-worker",
        "worker-bad-whsec",
        "METRICS_PORT",
        "redis://127.0.0.1:9",
        &[],
        &env,
    );
    let status = proc.wait_exit(DEADLINE).await.expect("the worker exits");
    let log = proc.log_text();
    assert_eq!(status.code(), Some(64), "{log}");
    assert!(
        log.contains("whsec_") && log.contains("not base64"),
        "{log}"
    );
    assert!(
        !log.contains("not*base64"),
        "the secret is not logged: {log}"
    );
}
