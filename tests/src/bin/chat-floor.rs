//! `chat-floor`: the floor reference of `scripts/bench`, a minimal in-process
//! broadcaster with no Redis, no persistence and no access checks.
//!
//! It speaks just enough of the chat protocol for `chat-loadgen`: `/ws?room=R`
//! answers with an empty `history` frame; a `message` frame is stamped with
//! the room's next `seq`, serialized **once** and queued to every member of
//! the room (the sender gets an `ack`). Each connection's writer takes every
//! frame queued for it and writes them with **one flush**. What our gateway
//! costs beyond this (per delivery, per idle connection, in latency) is what
//! the bench's ratio to the floor shows. Loopback only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Debug, Parser)]
#[command(about = "Floor reference broadcaster for scripts/bench (loopback only)")]
struct Cli {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8090)]
    port: u16,
}

/// One room: its members' queues and its `seq`.
#[derive(Default)]
struct Room {
    members: HashMap<u64, mpsc::UnboundedSender<Utf8Bytes>>,
    seq: u64,
}

#[derive(Default)]
struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
}

#[derive(Deserialize)]
struct Inbound {
    #[serde(rename = "type")]
    kind: String,
    data: Option<InboundData>,
}

#[derive(Deserialize)]
struct InboundData {
    message: Option<String>,
    client_id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], cli.port))).await?;
    let hub = Arc::new(Hub::default());
    loop {
        let (tcp, _) = listener.accept().await?;
        let hub = hub.clone();
        tokio::spawn(async move {
            let _ = serve(hub, tcp).await;
        });
    }
}

/// The `room` query parameter of a request path.
fn room_of(uri: &str) -> String {
    uri.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("room="))
        .unwrap_or("default")
        .to_owned()
}

// The handshake callback's error type is tungstenite's (a whole HTTP response).
#[allow(clippy::result_large_err)]
async fn serve(hub: Arc<Hub>, tcp: TcpStream) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut room = String::new();
    // Small read buffer, no write buffering beyond a flush: what an idle
    // connection holds is the floor's, not tungstenite's 128 KiB default.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        tcp,
        |req: &Request, resp: Response| {
            room = room_of(&req.uri().to_string());
            Ok(resp)
        },
        Some(config),
    )
    .await?;
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    let history = serde_json::json!({"type":"history","data":{"messages":[],"room":room}});
    tx.send(history.to_string().into())?;
    hub.rooms
        .lock()
        .unwrap()
        .entry(room.clone())
        .or_default()
        .members
        .insert(id, tx.clone());
    let (mut sink, mut stream) = ws.split();
    // The writer: everything queued, then one flush.
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            sink.feed(Message::Text(first)).await?;
            while let Ok(more) = rx.try_recv() {
                sink.feed(Message::Text(more)).await?;
            }
            sink.flush().await?;
        }
        anyhow::Ok(())
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(frame) = serde_json::from_str::<Inbound>(text.as_str()) else {
            continue;
        };
        let (Some(data), "message") = (frame.data, frame.kind.as_str()) else {
            continue;
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let msg_id = uuid::Uuid::now_v7().to_string();
        let mut rooms = hub.rooms.lock().unwrap();
        let Some(r) = rooms.get_mut(&room) else { break };
        r.seq += 1;
        let out: Utf8Bytes = serde_json::json!({"type":"message","data":{
            "id": msg_id, "room": room, "message": data.message.unwrap_or_default(),
            "username": "floor", "timestamp": now, "seq": r.seq}})
        .to_string()
        .into();
        for member in r.members.values() {
            let _ = member.send(out.clone());
        }
        drop(rooms);
        let ack = serde_json::json!({"type":"ack","data":{
            "client_id": data.client_id, "id": msg_id, "timestamp": now}});
        let _ = tx.send(ack.to_string().into());
    }
    if let Some(r) = hub.rooms.lock().unwrap().get_mut(&room) {
        r.members.remove(&id);
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}
