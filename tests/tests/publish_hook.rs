//! The pre-publish hook (`PUBLISH_HOOK_URL`) against real processes: a
//! gateway, a worker, Redis, and a hook receiver on 127.0.0.1 inside the
//! test whose answer depends on the message's text:
//! - accept, reject (error `rejected` with the reason, nothing stored) and
//!   modify (the new text is stored and delivered), over a WebSocket, for
//!   edits, and through the HTTP publish API (422 on a rejection);
//! - a hook that times out or answers 500: `unavailable` and nothing stored
//!   (fail-closed, the default), or stored unchanged with
//!   `PUBLISH_HOOK_FAIL_OPEN=true`;
//! - a pipelining client whose hook answers after random delays still sees
//!   its messages stored and delivered in send order;
//! - the requests verify with the Python `standardwebhooks` package;
//! - `PUBLISH_HOOK_URL` without `PUBLISH_HOOK_SECRET` exits with 64.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_tests::http_request;
use common::receiver::Receiver;
use common::webhooks::{check_standard_webhook, standardwebhooks_python};
use common::*;
use serde_json::{json, Value};

/// The example secret of the Standard Webhooks specification.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// How long a `slow…` message keeps the hook busy: far past the timeouts
/// the tests set.
const SLOW: Duration = Duration::from_millis(1500);
/// The hook timeout of the tests that time it out.
const TIMEOUT_MS: &str = "300";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Bytes,
    json: Value,
}

/// The receiver's shared state.
#[derive(Default)]
struct Hook {
    seen: Mutex<Vec<Seen>>,
    /// Texts in the order their requests ended: answered, or dropped when
    /// the gateway gave up on them (hyper then cancels the handler).
    ended: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Hook {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn ended(&self) -> Vec<String> {
        self.ended.lock().unwrap().clone()
    }
    /// The request whose `message` is `text`.
    fn request_for(&self, text: &str) -> Seen {
        self.seen()
            .into_iter()
            .find(|s| s.json["message"] == text)
            .unwrap_or_else(|| panic!("the hook never saw {text:?}"))
    }
}

/// A hook receiver on a free loopback port. What it answers depends on the
/// submitted text: `reject…` → reject (reason `no: <text>`), `modify:<x>` →
/// modify to `modified(<x>)`, `slow…` → accept after [`SLOW`], `fail…` →
/// 500, `jitter…` → accept after 0–40 ms, anything else → accept.
impl Receiver<Hook> {
    async fn start() -> Self {
        Receiver::serve(Hook::default(), receive).await
    }
}

/// Records the end of a request, answered or cancelled.
struct Ending {
    hook: Arc<Hook>,
    text: String,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.hook.in_flight.fetch_sub(1, Ordering::SeqCst);
        let text = std::mem::take(&mut self.text);
        self.hook.ended.lock().unwrap().push(text);
    }
}

async fn receive(State(hook): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).expect("the hook's body is JSON");
    let text = json["message"].as_str().unwrap_or_default().to_owned();
    hook.seen.lock().unwrap().push(Seen {
        headers,
        body,
        json,
    });
    let now = hook.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    hook.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _ending = Ending {
        hook: hook.clone(),
        text: text.clone(),
    };
    if text.starts_with("slow") {
        tokio::time::sleep(SLOW).await;
    } else if text.starts_with("jitter") {
        let ms = rand::random_range(0..40);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let answer = if text.starts_with("fail") {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    } else if text.starts_with("reject") {
        axum::Json(json!({"action":"reject","reason":format!("no: {text}")})).into_response()
    } else if let Some(rest) = text.strip_prefix("modify:") {
        axum::Json(json!({"action":"modify","message":format!("modified({rest})")})).into_response()
    } else {
        axum::Json(json!({"action":"accept"})).into_response()
    };
    answer
}

/// Redis, worker `w1`, gateway `g1` with the hook at `receiver`, plus `extra`
/// settings; the gateway is dropped first.
struct Rig {
    gateway: Gateway,
    _worker: Worker,
    receiver: Receiver<Hook>,
    redis: Redis,
}

impl Rig {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let receiver = Receiver::start().await;
        let redis = Redis::start().await;
        let worker = start_worker(&redis.url(), "w1", FAST_WORKER).await;
        let hook = [
            ("PUBLISH_HOOK_URL", receiver.url.as_str()),
            ("PUBLISH_HOOK_SECRET", WHSEC),
        ];
        let env = [FAST_GW, &hook[..], extra].concat();
        let gateway = start_gateway(&redis.url(), "g1", &env).await;
        Self {
            gateway,
            _worker: worker,
            receiver,
            redis,
        }
    }

    async fn join(&self, room: &str, user: &str) -> Client {
        let url = self.gateway.ws_url(&format!("room={room}&username={user}"));
        Client::join(&url).await.0
    }

    /// Waits until `text` is stored in `room`, and returns every stored text.
    async fn stored_through(&self, room: &str, text: &str) -> Vec<String> {
        eventually(&format!("{text:?} stored"), DEADLINE, || async {
            let texts = stored_texts(&self.redis, room).await;
            texts.iter().any(|t| t == text).then_some(texts)
        })
        .await
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(&self.gateway.addr(), series).await.unwrap_or(-1.0)
    }
}

/// The texts stored in `room`, oldest first.
async fn stored_texts(redis: &Redis, room: &str) -> Vec<String> {
    stored_records(redis, room)
        .await
        .iter()
        .map(|r| r["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Sends `frame` and returns the `ack` or `error` frame answering it.
async fn answer(c: &mut Client, frame: Value) -> Value {
    c.send_text(&frame.to_string()).await;
    loop {
        let v = c.next_json().await;
        if v["type"] == "ack" || v["type"] == "error" {
            return v;
        }
    }
}

fn edit_frame(room: &str, id: &Value, text: &str, client_id: &str) -> Value {
    json!({"type":"edit","data":{"room":room,"id":id,"message":text,"client_id":client_id}})
}

fn outcome(label: &str) -> String {
    format!("chat_gateway_publish_hook_outcomes_total{{outcome=\"{label}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_accepts_rejects_and_modifies_websocket_messages() {
    let rig = Rig::start(&[]).await;
    // Registered at 0 before the first call.
    for label in [
        "accept",
        "reject",
        "modify",
        "timeout",
        "error",
        "fail_open",
    ] {
        assert_eq!(rig.metric(&outcome(label)).await, 0.0, "{label}");
    }
    let room = "hook-ws";
    let mut alice = rig.join(room, "alice").await;
    let mut bob = rig.join(room, "bob").await;

    let ack = answer(&mut alice, message_frame(room, "hello", "a1")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let seen = rig.receiver.hook.request_for("hello").json;
    assert_eq!(seen["kind"], "message");
    assert_eq!(seen["room"], room);
    assert_eq!(seen["username"], "alice");
    assert_eq!(seen["client_id"], "a1");
    assert!(
        seen["user_id"].as_str().unwrap().starts_with("anon-"),
        "{seen}"
    );
    assert_eq!(seen["reply_to"], Value::Null);
    assert_eq!(seen["attachments"], json!([]));
    assert_eq!(seen["id"], Value::Null);

    let refused = answer(&mut alice, message_frame(room, "reject me", "a2")).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["data"]["code"], "rejected");
    assert_eq!(refused["data"]["message"], "no: reject me");
    assert_eq!(refused["data"]["client_id"], "a2");

    // A rejection opens no send-order window: the next message is stored.
    let ack = answer(&mut alice, message_frame(room, "modify:bad word", "a3")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let delivered = bob.messages(2).await;
    let texts: Vec<&str> = delivered
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello", "modified(bad word)"]);
    assert_eq!(delivered[1]["id"], ack["data"]["id"]);
    let stored = rig.stored_through(room, "modified(bad word)").await;
    assert_eq!(
        stored,
        ["hello", "modified(bad word)"],
        "nothing else stored"
    );

    assert_eq!(rig.metric(&outcome("accept")).await, 1.0);
    assert_eq!(rig.metric(&outcome("reject")).await, 1.0);
    assert_eq!(rig.metric(&outcome("modify")).await, 1.0);
    let calls = rig.metric("chat_gateway_publish_hook_seconds_count").await;
    assert_eq!(calls, 3.0, "every call's latency is recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_go_through_the_hook() {
    let rig = Rig::start(&[]).await;
    let room = "hook-edit";
    let mut alice = rig.join(room, "alice").await;
    let mut bob = rig.join(room, "bob").await;
    let ack = answer(&mut alice, message_frame(room, "first", "a1")).await;
    let id = ack["data"]["id"].clone();

    let refused = answer(&mut alice, edit_frame(room, &id, "reject this edit", "a2")).await;
    assert_eq!(refused["data"]["code"], "rejected", "{refused}");
    assert_eq!(refused["data"]["message"], "no: reject this edit");
    let ack = answer(&mut alice, edit_frame(room, &id, "modify:better", "a3")).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let seen = rig.receiver.hook.request_for("modify:better").json;
    assert_eq!(seen["kind"], "edit");
    assert_eq!(seen["id"], id, "an edit names its target");
    assert_eq!(seen["client_id"], "a3");

    let edit = bob.next_of_type("edit").await;
    assert_eq!(edit["data"]["id"], id);
    assert_eq!(edit["data"]["message"], "modified(better)");
    // The rejected edit was never stored: the only edit is the modified one,
    // and the message's current text is it.
    let (_, history) =
        Client::join(&rig.gateway.ws_url(&format!("room={room}&username=carol"))).await;
    let msgs = history["data"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "the message and one edit: {msgs:?}");
    assert_eq!(msgs[0]["message"], "modified(better)");
    assert_eq!(msgs[1]["type"], "edit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_publish_api_goes_through_the_hook() {
    let rig = Rig::start(&[("API_KEYS", "bot:k-bot")]).await;
    let room = "hook-http";
    let post = |body: Value| {
        let addr = rig.gateway.addr();
        async move {
            let (status, body) = http_request(
                &addr,
                "POST",
                &format!("/rooms/{room}/messages"),
                &[("Authorization", "Bearer k-bot")],
                &body.to_string(),
            )
            .await
            .unwrap();
            (
                status,
                serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = post(json!({"message":"reject via http"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "rejected");
    assert_eq!(body["error"]["message"], "no: reject via http");

    let (status, body) = post(json!({"message":"modify:from a bot","client_id":"h1"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["client_id"], "h1");
    let seen = rig.receiver.hook.request_for("modify:from a bot").json;
    assert_eq!(seen["user_id"], "api:bot");
    assert_eq!(seen["username"], "api");

    let stored = rig.stored_through(room, "modified(from a bot)").await;
    assert_eq!(
        stored,
        ["modified(from a bot)"],
        "the rejected one is not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_fails_closed_by_default() {
    let rig = Rig::start(&[("PUBLISH_HOOK_TIMEOUT_MS", TIMEOUT_MS)]).await;
    let room = "hook-closed";
    let mut alice = rig.join(room, "alice").await;
    let refused = answer(&mut alice, message_frame(room, "slow one", "a1")).await;
    assert_eq!(refused["data"]["code"], "unavailable", "{refused}");
    assert_eq!(refused["data"]["client_id"], "a1");
    // Another connection (this one now waits for a1's resend).
    let mut bob = rig.join(room, "bob").await;
    let refused = answer(&mut bob, message_frame(room, "fail hard", "b1")).await;
    assert_eq!(refused["data"]["code"], "unavailable", "{refused}");

    // Once the slow request has ended (the gateway gave up on it), a later
    // message is stored alone: neither refused one ever was.
    eventually("the slow request ended", DEADLINE, || async {
        rig.receiver
            .hook
            .ended()
            .iter()
            .any(|t| t == "slow one")
            .then_some(())
    })
    .await;
    let mut carol = rig.join(room, "carol").await;
    let ack = answer(&mut carol, message_frame(room, "later", "c1")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let stored = rig.stored_through(room, "later").await;
    assert_eq!(stored, ["later"]);
    assert_eq!(rig.metric(&outcome("timeout")).await, 1.0);
    assert_eq!(rig.metric(&outcome("error")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_fails_open_when_configured() {
    let rig = Rig::start(&[
        ("PUBLISH_HOOK_TIMEOUT_MS", TIMEOUT_MS),
        ("PUBLISH_HOOK_FAIL_OPEN", "true"),
    ])
    .await;
    let room = "hook-open";
    let mut alice = rig.join(room, "alice").await;
    for (text, client_id) in [("slow but fine", "a1"), ("fail but fine", "a2")] {
        let ack = answer(&mut alice, message_frame(room, text, client_id)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let stored = rig.stored_through(room, "fail but fine").await;
    assert_eq!(
        stored,
        ["slow but fine", "fail but fine"],
        "stored unchanged"
    );
    assert_eq!(rig.metric(&outcome("fail_open")).await, 2.0);
    assert_eq!(rig.metric(&outcome("timeout")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_keeps_its_order_through_a_hook_that_answers_out_of_order() {
    let rig = Rig::start(&[]).await;
    let room = "hook-order";
    let mut alice = rig.join(room, "alice").await;
    let mut bob = rig.join(room, "bob").await;
    const N: usize = 60;
    let texts: Vec<String> = (0..N).map(|i| format!("jitter {i:02}")).collect();
    // All sent before any answer is read.
    for (i, text) in texts.iter().enumerate() {
        alice
            .send_text(&message_frame(room, text, &format!("c{i}")).to_string())
            .await;
    }
    let mut acked = Vec::new();
    while acked.len() < N {
        let v = alice.next_json().await;
        match v["type"].as_str() {
            Some("ack") => acked.push(v["data"]["client_id"].as_str().unwrap().to_owned()),
            Some("error") => panic!("refused: {v}"),
            _ => {}
        }
    }
    let expected: Vec<String> = (0..N).map(|i| format!("c{i}")).collect();
    assert_eq!(acked, expected, "acks in send order");
    let delivered: Vec<String> = bob
        .messages(N)
        .await
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered, texts, "delivered in send order");
    let stored = rig.stored_through(room, &texts[N - 1]).await;
    assert_eq!(stored, texts, "stored in send order");

    // The test means something only if the hook did answer out of order.
    let hook = &rig.receiver.hook;
    assert!(
        hook.max_in_flight.load(Ordering::SeqCst) > 1,
        "the hook was called concurrently"
    );
    assert_ne!(hook.ended(), texts, "the hook answered out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_requests_verify_with_the_standardwebhooks_library() {
    // First, so that a slow first install does not age the request.
    let python = standardwebhooks_python().await;
    let rig = Rig::start(&[]).await;
    let room = "hook-signed";
    let mut alice = rig.join(room, "alice").await;
    let ack = answer(&mut alice, message_frame(room, "sign me", "a1")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let seen = rig.receiver.hook.request_for("sign me");
    assert!(seen.headers["webhook-id"]
        .to_str()
        .unwrap()
        .starts_with("msg_"));
    let report = check_standard_webhook(&python, WHSEC, &seen.headers, &seen.body).await;
    assert!(
        report.contains("a message for room hook-signed"),
        "{report}"
    );
}

#[tokio::test]
async fn a_hook_url_without_a_secret_stops_the_gateway_with_64() {
    let redis = Redis::start().await;
    let cases: [(&str, &[(&str, &str)]); 2] = [
        (
            "no secret",
            &[("PUBLISH_HOOK_URL", "http://127.0.0.1:9/hook")],
        ),
        (
            "a whsec_ secret that is not base64",
            &[
                ("PUBLISH_HOOK_URL", "http://127.0.0.1:9/hook"),
                ("PUBLISH_HOOK_SECRET", "whsec_not*base64"),
            ],
        ),
    ];
    for (what, env) in cases {
        let (_, mut proc) = spawn_service(
            "chat-gateway",
            "gateway-bad-hook",
            "PORT",
            &redis.url(),
            &[],
            env,
        );
        let status = proc
            .wait_exit(DEADLINE)
            .await
            .unwrap_or_else(|| panic!("{what}: the gateway kept running"));
        let log = proc.log_text();
        assert_eq!(status.code(), Some(64), "{what}: {log}");
        assert!(log.contains("PUBLISH_HOOK_SECRET"), "{what}: {log}");
        assert!(
            !log.contains("not*base64"),
            "the secret is not logged: {log}"
        );
    }
}

/// The first ```python block of docs/publish-hook.md.
fn python_example() -> String {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/publish-hook.md"
    ))
    .unwrap();
    let start = page.find("```python\n").expect("a python block") + "```python\n".len();
    let len = page[start..].find("```").expect("the block ends");
    page[start..start + len].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_hook_of_the_docs_works() {
    let dir = scratch_dir("python-hook");
    let script = dir.join("hook.py");
    std::fs::write(&script, python_example()).unwrap();
    let port = free_port();
    let mut python = tokio::process::Command::new("python3")
        .arg(&script)
        .env("PORT", port.to_string())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let addr = format!("127.0.0.1:{port}");
    eventually("the python hook listens", DEADLINE, || async {
        tokio::net::TcpStream::connect(&addr).await.ok().map(drop)
    })
    .await;

    let redis = Redis::start().await;
    let _worker = start_worker(&redis.url(), "w1", FAST_WORKER).await;
    let url = format!("http://{addr}/");
    let hook = [
        ("PUBLISH_HOOK_URL", url.as_str()),
        ("PUBLISH_HOOK_SECRET", "any secret"),
    ];
    let gateway = start_gateway(&redis.url(), "g1", &[FAST_GW, &hook[..]].concat()).await;
    let room = "hook-python";
    let (mut alice, _) =
        Client::join(&gateway.ws_url(&format!("room={room}&username=alice"))).await;
    let (mut bob, _) = Client::join(&gateway.ws_url(&format!("room={room}&username=bob"))).await;
    let refused = answer(&mut alice, message_frame(room, "Buy SPAM now", "a1")).await;
    assert_eq!(refused["data"]["code"], "rejected", "{refused}");
    assert_eq!(refused["data"]["message"], "no spam, please");
    for (text, client_id) in [("/shrug fine", "a2"), ("hello", "a3")] {
        let ack = answer(&mut alice, message_frame(room, text, client_id)).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let texts: Vec<String> = bob
        .messages(2)
        .await
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["fine ¯\\_(ツ)_/¯", "hello"]);
    let _ = python.kill().await;
    let _ = std::fs::remove_dir_all(dir);
}
