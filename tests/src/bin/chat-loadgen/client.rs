//! WebSocket connections for the load generator: optional source address,
//! protocol frames, and a cheap parse of what the server sends.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;

/// A client socket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Connects to `url` (`ws://host:port/...`), binding the local side to
/// `source` when given (spreads ephemeral ports over loopback addresses).
pub(crate) async fn connect(url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    connect_with(url, source, None).await
}

/// [`connect`] for a connection that mostly idles: a 4 KiB read buffer
/// instead of tungstenite's 128 KiB (allocated per connection up front:
/// 2 GiB for 16,000 connections).
pub(crate) async fn connect_idle(url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    connect_with(url, source, Some(config)).await
}

/// [`connect`] with a tungstenite configuration.
async fn connect_with(
    url: &str,
    source: Option<IpAddr>,
    config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
) -> anyhow::Result<Ws> {
    let rest = url
        .strip_prefix("ws://")
        .context("only ws:// URLs are supported")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = tokio::net::lookup_host(hostport)
        .await?
        .next()
        .context("gateway address does not resolve")?;
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, config).await?;
    Ok(ws)
}

/// The text of a load message: publisher, counter, send time, padding.
pub(crate) fn payload(publisher: u32, n: u64, sent_us: i64, pad: usize) -> String {
    let mut s = format!("{publisher}:{n}:{sent_us}:");
    s.extend(std::iter::repeat_n('x', pad));
    s
}

/// Parses a payload made by [`payload`].
pub(crate) fn parse_payload(text: &str) -> Option<(u32, u64, i64)> {
    let mut it = text.splitn(4, ':');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// A `message` frame for `room`.
pub(crate) fn message_frame(room: &str, text: &str, client_id: u64) -> String {
    serde_json::json!({"type":"message","data":{"room":room,"message":text,"client_id":client_id.to_string()}}).to_string()
}

/// A `typing` frame (active).
pub(crate) fn typing_frame() -> String {
    serde_json::json!({"type":"typing","data":{"active":true}}).to_string()
}

/// A `react` frame adding 👍 to message `id`; its `client_id` starts with `r`.
pub(crate) fn react_frame(room: &str, id: &str, n: u64) -> String {
    serde_json::json!({"type":"react","data":{"room":room,"id":id,"emoji":"👍","op":"add","client_id":format!("r{n}")}}).to_string()
}

/// The parts of a server frame the load generator looks at.
#[derive(Debug, Deserialize)]
pub(crate) struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) data: Option<IncomingData<'a>>,
}

/// `data` of a server frame.
#[derive(Debug, Deserialize)]
pub(crate) struct IncomingData<'a> {
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(borrow, default)]
    pub(crate) message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) client_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) id: Option<Cow<'a, str>>,
}

/// Current time in Unix microseconds.
pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Loopback source addresses `127.0.0.1 ..= 127.0.0.n`.
pub(crate) fn loopback_sources(n: u8) -> Vec<IpAddr> {
    (1..=n.max(1))
        .map(|i| IpAddr::from([127, 0, 0, i]))
        .collect()
}
