//! A fault-injecting TCP proxy between one process and Redis, for the
//! network-fault tests (DESIGN.md, "Integrity under network faults").
//!
//! Point only the process under test at [`FaultProxy::addr`]; the proxy
//! forwards every connection to the Redis address it was started with. It
//! reads the client→server byte stream as RESP, one command at a time, so a
//! fault can target one command by a byte pattern found in its encoding
//! (`EVALSHA`, `XREADGROUP`, `$4\r\nread\r\n`; matching is on the raw bytes,
//! case-sensitive). It counts the server's replies (RESP2 and RESP3; pushes
//! are passed through and not counted) so that it knows which reply answers
//! which command, even when the client pipelines.
//!
//! The faults, each a one-shot rule armed from a test:
//! - [`FaultProxy::stall_next`]: hold the next matching command (and, as TCP
//!   keeps order, everything behind it on that connection) for a while, then
//!   forward it **even if the client has gone meanwhile**: the request runs
//!   late in Redis, after the client gave up on it.
//! - [`FaultProxy::reset_after_next`]: forward the next matching command, then
//!   reset the client's connection (TCP RST), either at once without its
//!   reply ([`Reply::Drop`]) or right after passing its reply on
//!   ([`Reply::Deliver`]). The upstream connection stays open until Redis has
//!   answered, so the command surely ran.
//! - [`FaultProxy::fail_next`]: answer the next matching command with an
//!   error reply of the test's choice (`MOVED …`, `TRYAGAIN …`,
//!   `CLUSTERDOWN …`) instead of forwarding it: Redis never sees it, and the
//!   reply keeps its place among the connection's other replies.
//!
//! And standing controls: [`FaultProxy::set_latency`] (every command is
//! forwarded that much after it arrived), [`FaultProxy::cut_all`] (reset
//! every connection), [`FaultProxy::refuse_for`] (cut, and reset new
//! connections until a deadline), [`FaultProxy::drop_subscribers`] (reset the
//! connections that sent `SUBSCRIBE`, `PSUBSCRIBE` or `SSUBSCRIBE`).
//!
//! A connection that subscribes, or that starts replication (`PSYNC`,
//! `SYNC`), or `MONITOR`, is passed through byte for byte from then on:
//! its server→client stream is no longer one reply per command.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How many forwarded commands the proxy remembers for [`FaultProxy::seen`].
const SEEN_CAP: usize = 100_000;

/// What happens to the reply of a command after which the connection is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The client gets the reply, then the reset.
    Deliver,
    /// The client is reset as soon as the command is forwarded; its reply
    /// (read from Redis, so the command surely ran) is thrown away.
    Drop,
}

/// What a rule does to the command it matches.
#[derive(Debug, Clone)]
enum Action {
    Stall(Duration),
    Reset(Reply),
    Fail(Vec<u8>),
}

/// A one-shot fault waiting for its command.
#[derive(Debug)]
struct Rule {
    pattern: Vec<u8>,
    action: Action,
    fired: watch::Sender<usize>,
}

/// How a test learns that an armed fault happened.
#[derive(Debug, Clone)]
#[must_use = "a trigger tells when the fault happened"]
pub struct Trigger {
    fired: watch::Receiver<usize>,
}

impl Trigger {
    /// Whether the fault has happened (for a stall: the command was
    /// forwarded; for a reset: the client was reset and Redis answered the
    /// command; for an injected error: the error reply was sent).
    pub fn has_fired(&self) -> bool {
        *self.fired.borrow() > 0
    }

    /// Waits until the fault has happened, at most `within`.
    ///
    /// # Panics
    /// When it has not happened by then.
    pub async fn wait(&mut self, within: Duration) {
        let ok = tokio::time::timeout(within, self.fired.wait_for(|n| *n > 0)).await;
        assert!(
            matches!(ok, Ok(Ok(_))),
            "the armed proxy fault did not happen within {within:?}"
        );
    }
}

/// Per-connection controls kept by the proxy.
#[derive(Debug)]
struct ConnCtl {
    kill: watch::Sender<bool>,
    subscribed: bool,
}

/// The proxy's mutable state.
#[derive(Debug, Default)]
struct State {
    latency: Duration,
    refuse_until: Option<Instant>,
    rules: Vec<Rule>,
    conns: HashMap<u64, ConnCtl>,
    next_id: u64,
    seen: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running proxy; stops (and resets its connections) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`.
    ///
    /// # Errors
    /// Fails when no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_on(0, upstream).await
    }

    /// Starts a proxy on loopback `port` (0: a free one) forwarding to
    /// `upstream`.
    ///
    /// # Errors
    /// Fails when the port cannot be bound.
    pub async fn start_on(port: u16, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// The address to give the process under test.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    fn arm(&self, pattern: &[u8], action: Action) -> Trigger {
        let (fired, rx) = watch::channel(0);
        self.shared.lock().rules.push(Rule {
            pattern: pattern.to_vec(),
            action,
            fired,
        });
        Trigger { fired: rx }
    }

    /// Holds the next command containing `pattern` for `stall`, then
    /// forwards it even if its client has gone.
    pub fn stall_next(&self, pattern: &[u8], stall: Duration) -> Trigger {
        self.arm(pattern, Action::Stall(stall))
    }

    /// Forwards the next command containing `pattern`, then resets its
    /// client's connection (see [`Reply`]).
    pub fn reset_after_next(&self, pattern: &[u8], reply: Reply) -> Trigger {
        self.arm(pattern, Action::Reset(reply))
    }

    /// Answers the next command containing `pattern` with the error reply
    /// `-<error>` instead of forwarding it.
    pub fn fail_next(&self, pattern: &[u8], error: &str) -> Trigger {
        self.arm(pattern, Action::Fail(format!("-{error}\r\n").into_bytes()))
    }

    /// Drops every armed rule that has not fired yet.
    pub fn disarm(&self) {
        self.shared.lock().rules.clear();
    }

    /// Forwards every command `latency` after it arrived (order kept).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Resets every open connection; returns how many there were.
    pub fn cut_all(&self) -> usize {
        let mut state = self.shared.lock();
        let n = state.conns.len();
        for ctl in state.conns.values() {
            let _ = ctl.kill.send(true);
        }
        state.conns.clear();
        n
    }

    /// Resets every open connection and every new one until `period` has
    /// passed.
    pub fn refuse_for(&self, period: Duration) {
        self.shared.lock().refuse_until = Some(Instant::now() + period);
        self.cut_all();
    }

    /// Resets the connections that have subscribed to a channel; returns
    /// how many.
    pub fn drop_subscribers(&self) -> usize {
        let mut state = self.shared.lock();
        let subscribed: Vec<u64> = state
            .conns
            .iter()
            .filter(|(_, c)| c.subscribed)
            .map(|(id, _)| *id)
            .collect();
        for id in &subscribed {
            if let Some(ctl) = state.conns.remove(id) {
                let _ = ctl.kill.send(true);
            }
        }
        subscribed.len()
    }

    /// How many connections are open through the proxy.
    pub fn connections(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// How many forwarded commands contained `pattern` (injected failures
    /// are not forwarded and do not count).
    pub fn seen(&self, pattern: &[u8]) -> usize {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|c| contains(c, pattern))
            .count()
    }
}

impl FaultProxy {
    /// The forwarded commands that contained `pattern`, oldest first.
    pub fn seen_commands(&self, pattern: &[u8]) -> Vec<Vec<u8>> {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|c| contains(c, pattern))
            .cloned()
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut_all();
    }
}

/// Whether `hay` contains `needle`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let refused = {
            let state = shared.lock();
            state.refuse_until.is_some_and(|t| Instant::now() < t)
        };
        if refused {
            reset(&client);
            continue;
        }
        let (kill, kill_rx) = watch::channel(false);
        let id = {
            let mut state = shared.lock();
            state.next_id += 1;
            let id = state.next_id;
            state.conns.insert(
                id,
                ConnCtl {
                    kill,
                    subscribed: false,
                },
            );
            id
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(&shared, id, client, kill_rx).await;
            shared.lock().conns.remove(&id);
        });
    }
}

/// Closes `s` with a TCP RST rather than a FIN.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

/// One reply the server owes, in command order.
#[derive(Debug)]
enum Slot {
    /// Forwarded: the next reply from Redis answers it.
    Upstream(Option<(Reply, watch::Sender<usize>)>),
    /// Not forwarded: this error reply answers it.
    Injected(Vec<u8>, watch::Sender<usize>),
    /// From here on, pass the server's bytes through uncounted.
    Raw,
}

/// Proxies one client connection until either side ends it or it is cut.
async fn serve(shared: &Shared, id: u64, client: TcpStream, mut kill: watch::Receiver<bool>) {
    let upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(shared.upstream))
            .await
        {
            Ok(Ok(s)) => s,
            _ => {
                reset(&client);
                return;
            }
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    // The upstream write half outlives the forwarder: dropping it would
    // send Redis a FIN, and Redis may then close the connection before it
    // has answered what was forwarded last.
    let (ur, mut uw) = upstream.into_split();
    let (cmds_tx, cmds_rx) = mpsc::unbounded_channel();
    let (slots_tx, slots_rx) = mpsc::unbounded_channel();
    let inbound = async {
        read_commands(cr, cmds_tx).await;
        std::future::pending::<()>().await
    };
    let forward = async {
        forward(shared, id, cmds_rx, &mut uw, slots_tx).await;
        std::future::pending::<()>().await
    };
    let kill_wait = async {
        let _ = kill.wait_for(|k| *k).await;
    };
    // The reply pump decides when the connection is over: it sees the
    // kill, the server's close, and the end of everything forwarded.
    tokio::select! {
        () = pump(ur, cw, slots_rx, kill_wait) => {}
        () = inbound => {}
        () = forward => {}
    }
}

/// Reads whole commands from the client and queues them with their arrival
/// time; ends at the client's close.
async fn read_commands(mut cr: OwnedReadHalf, cmds: mpsc::UnboundedSender<(Instant, Vec<u8>)>) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match cr.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = Instant::now();
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        while let Some(end) = value_end(&buf, start) {
            if cmds.send((now, buf[start..end].to_vec())).is_err() {
                return;
            }
            start = end;
        }
        buf.drain(..start);
    }
}

/// The name of a command (its first argument), uppercased.
fn command_name(cmd: &[u8]) -> Vec<u8> {
    let name = if cmd.first() == Some(&b'*') {
        // *N\r\n$len\r\nNAME\r\n
        let mut lines = cmd.split(|&b| b == b'\n').skip(2);
        lines.next().unwrap_or_default()
    } else {
        cmd.split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default()
    };
    let name = name.strip_suffix(b"\r").unwrap_or(name);
    name.to_ascii_uppercase()
}

/// Forwards commands in order, applying latency and armed rules; ends when
/// the client is gone and everything it sent was forwarded, or after a
/// reset.
async fn forward(
    shared: &Shared,
    id: u64,
    mut cmds: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    uw: &mut OwnedWriteHalf,
    slots: mpsc::UnboundedSender<Slot>,
) {
    while let Some((arrived, cmd)) = cmds.recv().await {
        let latency = shared.lock().latency;
        tokio::time::sleep_until(arrived + latency).await;
        let rule = {
            let mut state = shared.lock();
            let hit = state.rules.iter().position(|r| contains(&cmd, &r.pattern));
            hit.map(|i| state.rules.remove(i))
        };
        let mut reset_after = None;
        if let Some(rule) = rule {
            match rule.action {
                Action::Stall(d) => {
                    tokio::time::sleep(d).await;
                    let _ = rule.fired.send(1);
                }
                Action::Fail(reply) => {
                    let _ = slots.send(Slot::Injected(reply, rule.fired));
                    continue;
                }
                Action::Reset(reply) => reset_after = Some((reply, rule.fired)),
            }
        }
        let name = command_name(&cmd);
        let raw = matches!(
            name.as_slice(),
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"PSYNC" | b"SYNC" | b"MONITOR"
        );
        let stop = reset_after.is_some();
        let slot = if raw {
            Slot::Raw
        } else {
            Slot::Upstream(reset_after)
        };
        // The reply's slot is queued before the command leaves: a fast
        // reply must find it.
        if slots.send(slot).is_err() {
            return;
        }
        if uw.write_all(&cmd).await.is_err() {
            return;
        }
        {
            let mut state = shared.lock();
            if state.seen.len() >= SEEN_CAP {
                state.seen.pop_front();
            }
            state.seen.push_back(cmd);
            if matches!(
                name.as_slice(),
                b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE"
            ) {
                if let Some(ctl) = state.conns.get_mut(&id) {
                    ctl.subscribed = true;
                }
            }
        }
        if stop {
            // Nothing after the reset command reaches Redis.
            return;
        }
    }
}

/// Passes the server's replies to the client in command order, inserting
/// injected ones and carrying out resets; returns when the connection is
/// over.
async fn pump(
    mut ur: OwnedReadHalf,
    cw: OwnedWriteHalf,
    mut slots: mpsc::UnboundedReceiver<Slot>,
    kill: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(kill);
    let mut client = Some(cw);
    let mut pending: VecDeque<Slot> = VecDeque::new();
    let mut slots_open = true;
    let mut raw = false;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    // Resets whose reply is still awaited, to fire once it arrives.
    loop {
        // Injected replies at the head go out now; a raw marker switches modes.
        while let Some(front) = pending.front() {
            match front {
                Slot::Injected(..) => {
                    let Some(Slot::Injected(reply, fired)) = pending.pop_front() else {
                        unreachable!()
                    };
                    send(&mut client, &reply).await;
                    let _ = fired.send(1);
                }
                Slot::Raw => {
                    pending.pop_front();
                    raw = true;
                }
                Slot::Upstream(_) => break,
            }
        }
        if raw {
            // Whatever was buffered goes through as it is.
            if !buf.is_empty() {
                let bytes = std::mem::take(&mut buf);
                send(&mut client, &bytes).await;
            }
        }
        if !slots_open && pending.is_empty() && !raw {
            return;
        }
        tokio::select! {
            () = &mut kill => {
                if let Some(c) = client.take() {
                    reset(c.as_ref());
                }
                return;
            }
            slot = slots.recv(), if slots_open => match slot {
                None => {
                    slots_open = false;
                    if raw {
                        return;
                    }
                }
                Some(s) => take_slot(s, &mut pending, &mut client),
            },
            read = ur.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        // Redis closed: so does the client.
                        if let Some(c) = client.take() {
                            reset(c.as_ref());
                        }
                        return;
                    }
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                if raw {
                    continue;
                }
                // A command's slot is queued before the command is written,
                // so every reply read here has its slot in the channel by
                // now, even when `select!` picked this branch first.
                while let Ok(s) = slots.try_recv() {
                    take_slot(s, &mut pending, &mut client);
                }
                let mut start = 0;
                while let Some(end) = value_end(&buf, start) {
                    let value = &buf[start..end];
                    start = end;
                    if value.first() == Some(&b'>') {
                        // A RESP3 push: not a reply to any command.
                        send(&mut client, value).await;
                        continue;
                    }
                    match pending.pop_front() {
                        Some(Slot::Upstream(None)) | None => send(&mut client, value).await,
                        Some(Slot::Upstream(Some((reply, fired)))) => {
                            if reply == Reply::Deliver {
                                send(&mut client, value).await;
                            }
                            if let Some(c) = client.take() {
                                reset(c.as_ref());
                            }
                            let _ = fired.send(1);
                        }
                        Some(other) => {
                            // Cannot happen: injected and raw slots are
                            // taken off the head above.
                            pending.push_front(other);
                            send(&mut client, value).await;
                        }
                    }
                    // Injected replies queued behind this one go out in order.
                    while let Some(Slot::Injected(..)) = pending.front() {
                        let Some(Slot::Injected(reply, fired)) = pending.pop_front() else {
                            unreachable!()
                        };
                        send(&mut client, &reply).await;
                        let _ = fired.send(1);
                    }
                }
                buf.drain(..start);
            }
        }
    }
}

/// Queues the slot of a forwarded (or answered) command; a reset that drops
/// the reply happens now.
fn take_slot(slot: Slot, pending: &mut VecDeque<Slot>, client: &mut Option<OwnedWriteHalf>) {
    if let Slot::Upstream(Some((Reply::Drop, _))) = &slot {
        // Reset the client now; the reply is still awaited (and dropped).
        if let Some(c) = client.take() {
            reset(c.as_ref());
        }
    }
    pending.push_back(slot);
}

/// Writes to the client if it is still there.
async fn send(client: &mut Option<OwnedWriteHalf>, bytes: &[u8]) {
    if let Some(c) = client.as_mut() {
        if c.write_all(bytes).await.is_err() {
            *client = None;
        }
    }
}

/// Where the RESP value (or inline command) starting at `pos` ends, if it
/// is complete in `buf`.
fn value_end(buf: &[u8], pos: usize) -> Option<usize> {
    let kind = *buf.get(pos)?;
    let cr = pos + 1 + buf.get(pos + 1..)?.windows(2).position(|w| w == b"\r\n")?;
    let after = cr + 2;
    let number = || -> i64 {
        std::str::from_utf8(&buf[pos + 1..cr])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1)
    };
    match kind {
        b'$' | b'!' | b'=' => {
            let n = number();
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = number();
            if n < 0 {
                return Some(after);
            }
            let items = if matches!(kind, b'%' | b'|') {
                2 * n as usize
            } else {
                n as usize
            };
            let mut p = after;
            for _ in 0..items {
                p = value_end(buf, p)?;
            }
            if kind == b'|' {
                // An attribute map precedes the value it describes.
                p = value_end(buf, p)?;
            }
            Some(p)
        }
        // Simple types, and inline commands (one line).
        _ => Some(after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_delimited() {
        assert_eq!(value_end(b"+OK\r\n", 0), Some(5));
        assert_eq!(value_end(b"+OK\r", 0), None);
        assert_eq!(value_end(b"$3\r\nabc\r\n:1\r\n", 0), Some(9));
        assert_eq!(value_end(b"$3\r\nab", 0), None);
        assert_eq!(value_end(b"$-1\r\n", 0), Some(5));
        let arr = b"*2\r\n$4\r\nPING\r\n:5\r\n";
        assert_eq!(value_end(arr, 0), Some(arr.len()));
        assert_eq!(value_end(&arr[..arr.len() - 1], 0), None);
        let map = b"%1\r\n+a\r\n*1\r\n:1\r\n";
        assert_eq!(value_end(map, 0), Some(map.len()));
        assert_eq!(value_end(b"PING\r\n", 0), Some(6));
    }

    #[test]
    fn command_names_are_read() {
        assert_eq!(
            command_name(b"*2\r\n$9\r\nsubscribe\r\n$1\r\na\r\n"),
            b"SUBSCRIBE"
        );
        assert_eq!(command_name(b"ping\r\n"), b"PING");
    }
}
