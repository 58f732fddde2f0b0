//! The gateway's TCP listener: socket options on accept, and a switch that
//! makes a socket close abortively.
//!
//! A peer that stops reading keeps whatever the gateway wrote queued in the
//! kernel after the gateway closes the socket (FIN-WAIT-1 with a full send
//! queue: about 4 MB each with default buffers, held until the kernel gives
//! up). When a connection cannot even write its close frame, it flips the
//! socket's [`AbortSwitch`]; on drop the socket then gets `SO_LINGER` 0,
//! which discards the queue and sends RST. `SOCKET_SEND_BUFFER_BYTES`
//! optionally caps the send buffer of every accepted socket as well.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Accepts TCP connections and prepares their sockets.
#[derive(Debug)]
pub struct ChatListener {
    inner: TcpListener,
    send_buffer: usize,
}

impl ChatListener {
    /// Wraps `inner`; `send_buffer` > 0 sets `SO_SNDBUF` on accepted sockets.
    pub fn new(inner: TcpListener, send_buffer: usize) -> Self {
        Self { inner, send_buffer }
    }
}

impl ChatListener {
    /// Accepts one connection and prepares its socket. Errors are the
    /// kernel's `accept` errors (e.g. `EMFILE`); the caller decides how to
    /// back off.
    ///
    /// # Errors
    /// When `accept` fails.
    pub async fn accept(&self) -> io::Result<(PeerStream, Peer)> {
        let (tcp, addr) = self.inner.accept().await?;
        // Chat frames are small: without TCP_NODELAY, Nagle's algorithm holds
        // one back while an earlier one is unacknowledged.
        let _ = tcp.set_nodelay(true);
        if self.send_buffer > 0 {
            let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(self.send_buffer);
        }
        let abort = AbortSwitch::default();
        let stream = PeerStream {
            tcp,
            abort: abort.clone(),
        };
        Ok((stream, Peer { addr, abort }))
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// When the socket cannot report it.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Makes a socket close with RST instead of FIN when it is dropped.
#[derive(Debug, Clone, Default)]
pub struct AbortSwitch(Arc<AtomicBool>);

impl AbortSwitch {
    /// Marks the socket for an abortive close.
    pub fn abort_on_close(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// An accepted socket that honours its [`AbortSwitch`] when dropped.
#[derive(Debug)]
pub struct PeerStream {
    tcp: TcpStream,
    abort: AbortSwitch,
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        if self.abort.is_set() {
            // Zero linger: close() drops unsent data and sends RST at once.
            let _ = self.tcp.set_zero_linger();
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// What a request knows about its connection: the peer's address and the
/// socket's abort switch.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Flipped by a connection whose peer stopped reading.
    pub abort: AbortSwitch,
}
