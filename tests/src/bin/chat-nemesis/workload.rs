//! The workload: clients that behave as the protocol asks real clients to,
//! and log what they saw for the checker.
//!
//! - WebSocket publishers send one item at a time (a message, now and then
//!   an edit of or a reaction to their last acked message), each with a
//!   `client_id`, and move on only after its `ack`: on `unavailable` they
//!   resend it with the same `client_id`; on a close, a timeout or a failed
//!   connect they reconnect (to the next gateway, with their `session`, so
//!   they stay the author) and resend it. So their acked items are in send
//!   order.
//! - The HTTP publisher posts with the API key, and on a 503 or no answer
//!   posts again with the same `client_id` to the next gateway.
//! - Subscribers, one per room and gateway, log every frame and reconnect
//!   after a close or a failure with `since` (the last `seq` they have),
//!   `epoch` and `session`. They never reconnect just because nothing
//!   arrives: a socket that goes silent is for the checker to see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::record::{PublisherLog, Sent, SentKind, SubEvent, SubscriberLog};
use crate::system::API_KEY;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a client waits for a connection, a join or an answer.
const WAIT: Duration = Duration::from_secs(5);
/// Pause between two sends of one publisher.
const PACE: Duration = Duration::from_millis(30);

/// What every client task shares.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    /// Gateway ports (kept across restarts).
    pub(crate) gw_ports: Vec<u16>,
    /// Set when publishers should finish their current item and stop.
    pub(crate) stop_sending: watch::Receiver<bool>,
    /// Set when every client must stop now.
    pub(crate) stop_all: watch::Receiver<bool>,
}

impl Ctx {
    fn url(&self, gw: usize, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?{query}", self.gw_ports[gw])
    }

    fn next_gw(&self, gw: usize) -> usize {
        (gw + 1) % self.gw_ports.len()
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn connect(url: &str) -> Result<Ws, String> {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// A publisher's connection and identity.
struct Pub {
    name: String,
    room: String,
    gw: usize,
    ws: Option<Ws>,
    session: Option<String>,
}

impl Pub {
    /// Connects (with the session, if any) and reads up to the session frame.
    async fn ensure_connected(&mut self, ctx: &Ctx) -> bool {
        if self.ws.is_some() {
            return true;
        }
        let mut q = format!("room={}&username={}", self.room, self.name);
        if let Some(s) = &self.session {
            q.push_str(&format!("&session={}", enc(s)));
        }
        let Ok(mut ws) = connect(&ctx.url(self.gw, &q)).await else {
            self.gw = ctx.next_gw(self.gw);
            return false;
        };
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["type"] == "session" {
                        if let Some(s) = v["data"]["session"].as_str() {
                            self.session = Some(s.to_owned());
                        }
                        self.ws = Some(ws);
                        return true;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => {
                    self.gw = ctx.next_gw(self.gw);
                    return false;
                }
            }
        }
    }

    /// Sends `frame` until it is acked or refused for good, or the run
    /// stops; fills in `sent`.
    async fn send_until_done(&mut self, ctx: &Ctx, frame: &Value, sent: &mut Sent) {
        let text = frame.to_string();
        while !*ctx.stop_all.borrow() {
            if !self.ensure_connected(ctx).await {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            let ws = self.ws.as_mut().expect("connected");
            sent.attempts += 1;
            if ws.send(Message::Text(text.clone().into())).await.is_err() {
                self.ws = None;
                continue;
            }
            match wait_answer(ws, &sent.client_id).await {
                Answer::Acked(id) => {
                    sent.acked_id = Some(id);
                    return;
                }
                Answer::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Answer::Refused => return,
                Answer::Lost => {
                    self.ws = None;
                    self.gw = ctx.next_gw(self.gw);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

enum Answer {
    Acked(String),
    Unavailable,
    Refused,
    Lost,
}

/// Reads frames until the answer to `client_id` (deliveries on the way are
/// skipped), a close, or [`WAIT`] without it.
async fn wait_answer(ws: &mut Ws, client_id: &str) -> Answer {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let Ok(next) = tokio::time::timeout_at(end, ws.next()).await else {
            return Answer::Lost;
        };
        let t = match next {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Answer::Lost,
            Some(Ok(_)) => continue,
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
        if v["data"]["client_id"] != client_id {
            continue;
        }
        match (v["type"].as_str(), v["data"]["code"].as_str()) {
            (Some("ack"), _) => {
                return match v["data"]["id"].as_str() {
                    Some(id) => Answer::Acked(id.to_owned()),
                    None => Answer::Refused,
                }
            }
            (Some("error"), Some("unavailable")) => return Answer::Unavailable,
            (Some("error"), _) => return Answer::Refused,
            _ => {}
        }
    }
}

/// A WebSocket publisher in `room`, starting on gateway `home`.
pub(crate) async fn ws_publisher(
    name: String,
    room: String,
    home: usize,
    ctx: Ctx,
) -> PublisherLog {
    let mut p = Pub {
        name: name.clone(),
        room: room.clone(),
        gw: home,
        ws: None,
        session: None,
    };
    let mut log = PublisherLog {
        name: name.clone(),
        sent: Vec::new(),
    };
    let mut last_msg: Option<String> = None;
    let mut n = 0u64;
    while !*ctx.stop_sending.borrow() {
        n += 1;
        let client_id = format!("{name}-{n}");
        let text = format!("nemesis-msg {name} {n}");
        let (kind, frame) = match (&last_msg, n % 10) {
            (Some(id), 4) => (
                SentKind::Event,
                json!({"type":"edit","data":{"room":room,"id":id,"message":format!("nemesis-edit {name} {n}"),"client_id":client_id}}),
            ),
            (Some(id), 7) => (
                SentKind::Event,
                json!({"type":"react","data":{"room":room,"id":id,"emoji":"👍","op":"add","client_id":client_id}}),
            ),
            _ => (
                SentKind::Message,
                json!({"type":"message","data":{"room":room,"message":text,"client_id":client_id}}),
            ),
        };
        let mut sent = Sent {
            room: room.clone(),
            client_id,
            kind,
            text,
            acked_id: None,
            attempts: 0,
        };
        p.send_until_done(&ctx, &frame, &mut sent).await;
        if kind == SentKind::Message && sent.acked_id.is_some() {
            last_msg.clone_from(&sent.acked_id);
        }
        log.sent.push(sent);
        tokio::time::sleep(PACE).await;
    }
    log
}

/// The HTTP publisher: posts with the API key, round-robin over `rooms`.
pub(crate) async fn http_publisher(rooms: Vec<String>, ctx: Ctx) -> PublisherLog {
    let mut log = PublisherLog {
        name: "http".into(),
        sent: Vec::new(),
    };
    let auth = format!("Bearer {API_KEY}");
    let mut gw = 0;
    let mut n = 0u64;
    while !*ctx.stop_sending.borrow() {
        n += 1;
        let room = &rooms[n as usize % rooms.len()];
        let client_id = format!("http-{n}");
        let text = format!("nemesis-msg http {n}");
        let body = json!({"message": text, "client_id": client_id}).to_string();
        let mut sent = Sent {
            room: room.clone(),
            client_id,
            kind: SentKind::Message,
            text,
            acked_id: None,
            attempts: 0,
        };
        while !*ctx.stop_all.borrow() {
            sent.attempts += 1;
            let addr = format!("127.0.0.1:{}", ctx.gw_ports[gw]);
            let path = format!("/rooms/{room}/messages");
            let r =
                chat_tests::http_request(&addr, "POST", &path, &[("Authorization", &auth)], &body)
                    .await;
            match r {
                Ok((201, b)) => {
                    let v: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
                    sent.acked_id = v["id"].as_str().map(str::to_owned);
                    break;
                }
                Ok((s, _)) if s != 503 && s != 0 && s != 429 => break,
                _ => {
                    gw = ctx.next_gw(gw);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        log.sent.push(sent);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    log
}

/// A subscriber of `room` on gateway `home`; `progress` holds the last
/// `seq` it has, for the end-of-run wait.
pub(crate) async fn subscriber(
    name: String,
    room: String,
    home: usize,
    mut ctx: Ctx,
    progress: Arc<AtomicU64>,
) -> SubscriberLog {
    let mut log = SubscriberLog {
        name: name.clone(),
        room: room.clone(),
        ..SubscriberLog::default()
    };
    let mut last: Option<u64> = None;
    let mut epoch: Option<String> = None;
    let mut session: Option<String> = None;
    let mut gw = home;
    let mut fails = 0;
    'outer: while !*ctx.stop_all.borrow() {
        let mut q = format!("room={room}&username={name}");
        if let Some(l) = last {
            q.push_str(&format!("&since={l}"));
            if let Some(e) = &epoch {
                q.push_str(&format!("&epoch={}", enc(e)));
            }
        }
        if let Some(s) = &session {
            q.push_str(&format!("&session={}", enc(s)));
        }
        let mut ws = match connect(&ctx.url(gw, &q)).await {
            Ok(ws) => ws,
            Err(e) => {
                log.events
                    .push(SubEvent::Dropped(format!("connect to gw{gw}: {e}")));
                fails += 1;
                if fails >= 2 {
                    gw = ctx.next_gw(gw);
                    fails = 0;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        fails = 0;
        log.events.push(SubEvent::Connect {
            gateway: gw,
            since: last,
        });
        loop {
            let next = tokio::select! {
                _ = ctx.stop_all.changed() => {
                    log.connected_at_end = true;
                    break 'outer;
                }
                next = ws.next() => next,
            };
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    let data = &v["data"];
                    match v["type"].as_str().unwrap_or("") {
                        "session" => session = data["session"].as_str().map(str::to_owned),
                        "history" => {
                            if let Some(e) = data["epoch"].as_str() {
                                epoch = Some(e.to_owned());
                            }
                            let top = data["messages"]
                                .as_array()
                                .and_then(|m| m.iter().filter_map(|m| m["seq"].as_u64()).max())
                                .or(data["latest_seq"].as_u64());
                            last = if data["reset"].is_null() {
                                last.max(top)
                            } else {
                                top.or(Some(0))
                            };
                            log.events.push(SubEvent::Frame(v));
                        }
                        "message" | "edit" | "delete" | "reaction" => {
                            last = last.max(data["seq"].as_u64());
                            log.events.push(SubEvent::Frame(v));
                        }
                        _ => {}
                    }
                    progress.store(last.unwrap_or(0), Ordering::Relaxed);
                }
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = f.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    log.events.push(SubEvent::Closed(code, reason));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    log.events.push(SubEvent::Dropped(e.to_string()));
                    break;
                }
                None => {
                    log.events.push(SubEvent::Dropped("end of stream".into()));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    log
}
