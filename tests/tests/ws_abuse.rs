//! Protocol abuse over a raw TCP socket with hand-made frames: each gets
//! its RFC 6455 close code, counted in
//! `chat_gateway_connections_closed_total{reason}`; a message split into
//! thousands of continuation frames is bounded by `WS_MAX_MESSAGE_BYTES`
//! (and handled in linear time); a ping flood queues nothing and spends the
//! sender's rate-limit tokens.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A WebSocket client that writes frames byte by byte as told, valid or not.
struct RawWs {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

/// One frame as the server sent it.
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl RawWs {
    /// Connects and upgrades `/ws?{query}`; panics unless the answer is 101.
    async fn connect(addr: &str, query: &str) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        let (read, mut writer) = tcp.into_split();
        let request = format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        writer.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(read);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = tokio::time::timeout(DEADLINE, reader.read_u8())
                .await
                .expect("upgrade answer in time")
                .expect("read upgrade answer");
            head.push(b);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Self { reader, writer }
    }

    /// Connects and reads the join `history` frame.
    async fn join(addr: &str, room: &str) -> Self {
        let mut ws = Self::connect(addr, &format!("room={room}")).await;
        let first = ws.read_frame().await.expect("history frame");
        assert_eq!(first.opcode, TEXT);
        // Auth is off: the anonymous session frame follows the history.
        let session = ws.read_frame().await.expect("session frame");
        let session: Value = serde_json::from_slice(&session.payload).unwrap();
        assert_eq!(session["type"], "session");
        ws
    }

    /// Writes one frame: `fin`, `opcode`, `payload`, masked or not.
    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8], masked: bool) {
        let bytes = encode(fin, opcode, payload, masked);
        self.writer.write_all(&bytes).await.expect("write frame");
    }

    /// Writes raw bytes (many frames at once).
    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write frames");
    }

    /// Reads one server frame; `None` on EOF or error.
    async fn read_frame(&mut self) -> Option<Frame> {
        let read = async {
            let b0 = self.reader.read_u8().await.ok()?;
            let b1 = self.reader.read_u8().await.ok()?;
            assert_eq!(b1 & 0x80, 0, "server frames are unmasked");
            let len = match b1 & 0x7f {
                126 => u64::from(self.reader.read_u16().await.ok()?),
                127 => self.reader.read_u64().await.ok()?,
                n => u64::from(n),
            };
            let mut payload = vec![0; usize::try_from(len).unwrap()];
            self.reader.read_exact(&mut payload).await.ok()?;
            Some(Frame {
                opcode: b0 & 0x0f,
                payload,
            })
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("a frame or EOF before the deadline")
    }

    /// Reads frames until the server's close frame; returns its code.
    async fn close_code(&mut self) -> Option<u16> {
        while let Some(f) = self.read_frame().await {
            if f.opcode == CLOSE {
                return (f.payload.len() >= 2)
                    .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
            }
        }
        None
    }

    /// Reads frames until a JSON text frame, which it returns.
    async fn next_text(&mut self) -> Value {
        loop {
            let f = self.read_frame().await.expect("connection open");
            if f.opcode == TEXT {
                return serde_json::from_slice(&f.payload).unwrap();
            }
        }
    }

    /// Reads frames until a JSON text frame of `kind`.
    async fn next_of_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_text().await;
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// Encodes one client frame.
fn encode(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

async fn closed_total(addr: &str, reason: &str) -> f64 {
    metric(
        addr,
        &format!("chat_gateway_connections_closed_total{{reason=\"{reason}\",transport=\"ws\"}}"),
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_abuse_gets_rfc_6455_close_codes() {
    let redis = Redis::start().await;
    let gw = start_gateway(
        &redis.url(),
        "gw-abuse",
        &[
            ("WS_MAX_MESSAGE_BYTES", "65536"),
            ("MAX_FRAME_BYTES", "65536"),
        ],
    )
    .await;
    let addr = gw.addr();
    let message = br#"{"type":"message","data":{"room":"r","message":"hi"}}"#;
    // (what, frames to write, close code, metric reason)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "unmasked text frame",
            encode(true, TEXT, message, false),
            1002,
            "protocol_error",
        ),
        (
            "126-byte ping",
            encode(true, PING, &[b'p'; 126], true),
            1002,
            "protocol_error",
        ),
        (
            "fragmented ping",
            encode(false, PING, b"p", true),
            1002,
            "protocol_error",
        ),
        (
            "reserved bits",
            {
                let mut f = encode(true, TEXT, message, true);
                f[0] |= 0x40;
                f
            },
            1002,
            "protocol_error",
        ),
        (
            "reserved opcode",
            encode(true, 0x3, b"x", true),
            1002,
            "protocol_error",
        ),
        (
            "continuation without a message",
            encode(true, CONTINUATION, b"x", true),
            1002,
            "protocol_error",
        ),
        (
            "invalid UTF-8 text",
            encode(true, TEXT, b"{\"type\":\"\xff\xfe\"}", true),
            1007,
            "invalid_utf8",
        ),
        (
            "invalid UTF-8 across fragments",
            [
                encode(false, TEXT, b"ok \xe2\x82", true),
                encode(true, CONTINUATION, b"\x28", true),
            ]
            .concat(),
            1007,
            "invalid_utf8",
        ),
        (
            "one frame over WS_MAX_MESSAGE_BYTES",
            encode(true, TEXT, &vec![b' '; 70_000], true),
            1009,
            "too_big",
        ),
    ];
    for (what, bytes, code, reason) in cases {
        let before = closed_total(&addr, reason).await;
        let mut ws = RawWs::join(&addr, "r").await;
        ws.send_bytes(&bytes).await;
        assert_eq!(ws.close_code().await, Some(code), "{what}");
        eventually(&format!("{what} counted as {reason}"), DEADLINE, || {
            let addr = addr.clone();
            async move { (closed_total(&addr, reason).await > before).then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_continuation_frames_are_bounded_and_linear() {
    let redis = Redis::start().await;
    let gw = start_gateway(
        &redis.url(),
        "gw-frag",
        &[
            ("WS_MAX_MESSAGE_BYTES", "65536"),
            ("MAX_FRAME_BYTES", "65536"),
        ],
    )
    .await;
    let addr = gw.addr();

    // A valid message in 5,000 fragments (40 KB) is reassembled and stored.
    let mut ws = RawWs::join(&addr, "frag").await;
    let json = format!(
        r#"{{"type":"message","data":{{"room":"frag","message":"joined","client_id":"f1"}}{}}}"#,
        " ".repeat(40_000)
    );
    // 4,999 fragments of 8 bytes, then the rest.
    let (head, tail) = json.as_bytes().split_at(8 * 4_999);
    let chunks: Vec<&[u8]> = head.chunks(8).chain([tail]).collect();
    assert_eq!(chunks.len(), 5_000);
    let mut bytes = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONTINUATION };
        bytes.extend(encode(i == chunks.len() - 1, opcode, chunk, true));
    }
    let started = Instant::now();
    ws.send_bytes(&bytes).await;
    let ack = ws.next_of_type("ack").await;
    assert_eq!(ack["data"]["client_id"], "f1");
    eprintln!(
        "{} continuation frames reassembled and acked in {} ms",
        chunks.len(),
        started.elapsed().as_millis()
    );

    // 5,000 fragments adding up past WS_MAX_MESSAGE_BYTES: closed with 1009
    // as soon as the running total exceeds it.
    let mut ws = RawWs::join(&addr, "frag").await;
    let mut bytes = encode(false, TEXT, b"[", true);
    for i in 1..5_000 {
        bytes.extend(encode(i == 4_999, CONTINUATION, &[b' '; 20], true));
    }
    let before = closed_total(&addr, "too_big").await;
    // The server may close before it has read everything: ignore write errors.
    let _ = ws.writer.write_all(&bytes).await;
    assert_eq!(ws.close_code().await, Some(1009));
    eventually("counted as too_big", DEADLINE, || {
        let addr = addr.clone();
        async move { (closed_total(&addr, "too_big").await > before).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_queues_nothing_and_spends_rate_limit_tokens() {
    let redis = Redis::start().await;
    let gw = start_gateway(
        &redis.url(),
        "gw-ping",
        &[("RATE_LIMIT_PER_SEC", "1"), ("RATE_LIMIT_BURST", "40")],
    )
    .await;
    let addr = gw.addr();
    let limited_before = metric(&addr, "chat_gateway_rate_limited_frames_total")
        .await
        .unwrap_or(0.0);
    let pid = gw.proc.pid();
    let rss_before = rss_bytes(pid);

    let mut ws = RawWs::join(&addr, "ping").await;
    let pings = 20_000;
    let flood: Vec<u8> = (0..pings)
        .flat_map(|i: u32| encode(true, PING, &i.to_be_bytes(), true))
        .collect();
    // Written without reading a single pong.
    ws.send_bytes(&flood).await;
    // Then a message: the pings spent every token, so it is refused.
    ws.send(
        true,
        TEXT,
        br#"{"type":"message","data":{"room":"ping","message":"hi","client_id":"p1"}}"#,
        true,
    )
    .await;
    let mut pongs = 0u32;
    let refusal = loop {
        let f = ws.read_frame().await.expect("connection stays open");
        match f.opcode {
            PONG => pongs += 1,
            TEXT => break serde_json::from_slice::<Value>(&f.payload).unwrap(),
            other => panic!("unexpected frame opcode {other}"),
        }
    };
    assert_eq!(refusal["type"], "error");
    assert_eq!(refusal["data"]["code"], "rate_limited");
    assert!(pongs <= pings, "{pongs} pongs for {pings} pings");
    let limited = metric(&addr, "chat_gateway_rate_limited_frames_total")
        .await
        .unwrap_or(0.0)
        - limited_before;
    assert!(
        limited >= f64::from(pings - 40),
        "only {limited} rate-limited frames counted"
    );
    let rss_after = rss_bytes(pid);
    eprintln!(
        "{pings} pings: {pongs} pongs answered, {limited} counted against the rate limit, gateway RSS {} -> {} KiB",
        rss_before / 1024,
        rss_after / 1024
    );
    // The connection stays usable: once a token refills (1 a second), a
    // message is acked. Refused attempts spend nothing.
    let end = Instant::now() + DEADLINE;
    loop {
        ws.send(
            true,
            TEXT,
            br#"{"type":"message","data":{"room":"ping","message":"hi","client_id":"p2"}}"#,
            true,
        )
        .await;
        let reply = ws.next_text().await;
        if reply["type"] == "ack" {
            break;
        }
        assert_eq!(reply["data"]["code"], "rate_limited");
        assert!(Instant::now() < end, "no token refilled");
        // Pace the attempts; the loop ends on the ack, not on this pause.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
