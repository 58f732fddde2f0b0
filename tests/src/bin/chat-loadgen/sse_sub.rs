//! A subscriber over server-sent events (`GET /sse`), for comparing what a
//! delivery costs the gateway on each transport (`fanout --sse-subs N`).
//! Plain HTTP/1.1 over one socket: the chunked body is decoded by hand and
//! split into events; only `data:` lines matter here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::roles::{self, Frames};
use crate::stats::SubStats;

/// An open event stream: the socket and the undecoded event text.
struct Stream {
    io: BufReader<TcpStream>,
    text: String,
}

impl Stream {
    /// Opens `/sse` for the query of the `ws://…/ws?…` URL `url`.
    async fn open(url: &str, source: Option<IpAddr>) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("ws://").context("only ws:// URLs")?;
        let (hostport, path) = rest.split_once('/').context("URL without a path")?;
        let query = path.split_once('?').map_or("", |(_, q)| q);
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
        let mut tcp = sock.connect(addr).await?;
        tcp.set_nodelay(true)?;
        let req = format!(
            "GET /sse?{query} HTTP/1.1\r\nHost: {hostport}\r\nAccept: text/event-stream\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut io = BufReader::new(tcp);
        let mut line = String::new();
        io.read_line(&mut line).await?;
        anyhow::ensure!(line.contains(" 200 "), "/sse refused: {}", line.trim());
        loop {
            line.clear();
            io.read_line(&mut line).await?;
            if line.trim().is_empty() {
                break;
            }
        }
        Ok(Self {
            io,
            text: String::new(),
        })
    }

    /// The next `data:` payload; `None` at the end of the stream.
    async fn next_data(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return Ok(Some(data.to_owned()));
                }
            }
            let mut size = String::new();
            if self.io.read_line(&mut size).await? == 0 {
                return Ok(None);
            }
            let n = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
            if n == 0 {
                return Ok(None);
            }
            let mut chunk = vec![0; n + 2];
            self.io.read_exact(&mut chunk).await?;
            chunk.truncate(n);
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

impl Frames for Stream {
    type Text = String;
    async fn next_text(&mut self) -> anyhow::Result<Option<String>> {
        self.next_data().await
    }
}

/// The SSE twin of `roles::subscriber`: opens `/sse`, then
/// [`roles::subscribe`]s.
pub(crate) async fn subscriber(
    url: String,
    source: Option<IpAddr>,
    ready: mpsc::Sender<()>,
    target: watch::Receiver<Option<u64>>,
    deadline: Duration,
) -> anyhow::Result<SubStats> {
    let mut stream = Stream::open(&url, source).await?;
    roles::subscribe(&mut stream, ready, target, deadline).await
}
