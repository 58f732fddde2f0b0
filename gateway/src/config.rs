//! Gateway configuration: clap flags with env fallbacks, defaults as constants.

use std::time::Duration;

use chat_shared::config::{LogArgs, RedisArgs};
use clap::Parser;

/// The spec's default port.
pub const DEFAULT_PORT: u16 = 8084;

/// Default seconds between two fetches of `JWT_JWKS_URL`.
pub const DEFAULT_JWKS_REFRESH_S: u64 = 300;

/// `chat-gateway`: terminates chat WebSockets, validates and stamps messages,
/// appends them to Redis streams, and delivers what workers publish back.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct GatewayConfig {
    /// HTTP and WebSocket port.
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: String,

    /// Identity of this gateway, unique per process (default: host name plus a
    /// random suffix). A fixed id (e.g. a StatefulSet pod name) waits for a
    /// previous process's heartbeat to go stale (about 3 × `HEARTBEAT_MS`), then
    /// removes the entries it left; while a live gateway holds the id, the new
    /// one exits with 64.
    #[arg(long, env = "GATEWAY_ID")]
    pub gateway_id: Option<String>,

    /// Number of stream shards (1–4096); must be the same on every gateway and
    /// worker (recorded in Redis, a process with another value exits with 64).
    #[arg(long, env = "STREAM_SHARDS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub stream_shards: u32,

    /// Messages sent in the `history` frame on join (0 disables the frame).
    #[arg(long, env = "HISTORY_ON_JOIN", default_value_t = 50)]
    pub history_on_join: usize,

    /// Largest history page a client or the HTTP API may ask for (1–10000).
    #[arg(long, env = "HISTORY_PAGE_MAX", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub history_page_max: u64,

    /// Longest message text, in characters (1–1000000).
    #[arg(long, env = "MAX_MESSAGE_LEN", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_message_len: u64,

    /// Largest text frame answered normally, in bytes; larger ones up to
    /// `WS_MAX_MESSAGE_BYTES` get a `frame_too_large` error, the connection stays.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,

    /// Hard WebSocket message limit in bytes: beyond it the connection is closed
    /// with 1009 (the frame cannot even be buffered).
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 1_048_576)]
    pub ws_max_message_bytes: usize,

    /// Initial read buffer per WebSocket, in bytes (512–1048576). It grows for larger frames;
    /// tungstenite zero-fills all of it on the first read, so every idle
    /// connection holds it (its default, 128 KiB, dominated per-connection memory).
    #[arg(long, env = "WS_READ_BUFFER_BYTES", default_value_t = 512, value_parser = clap::value_parser!(u64).range(512..=1_048_576))]
    pub ws_read_buffer_bytes: u64,

    /// Outbound frames queued per connection before it counts as a slow
    /// consumer and is closed with 1013 (1–65536). Keep it at least the workers'
    /// `BATCH_SIZE`: one batch can carry that many messages of one room. Slots
    /// (16 bytes each) are allocated as messages queue up and released when
    /// the queue drains, and frames are shared, so a large bound is cheap.
    #[arg(long, env = "OUTBOUND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub outbound_queue: u64,

    /// Messages one connection may have read but not yet answered (1–1024):
    /// they are stored in batches of up to this many, one round trip and one
    /// script call per batch, while the connection goes on reading (pipelined
    /// appends); beyond it the gateway stops reading that socket until answers
    /// go out (TCP slows the sender). 1 = one append at a time.
    #[arg(long, env = "APPEND_PIPELINE_DEPTH", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub append_pipeline_depth: u64,

    /// Longest a single write to a client may take before it counts as a slow consumer, in ms.
    #[arg(long, env = "WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// Most entries one stream shard may hold before appends are refused with
    /// `unavailable` (workers down or behind) instead of filling Redis's
    /// memory. Counts entries processed but not yet trimmed too (at most ~100
    /// per shard). 0 disables the cap.
    #[arg(long, env = "STREAM_BACKLOG_MAX", default_value_t = 100_000)]
    pub stream_backlog_max: u64,

    /// How long a message's `(room, user, client_id)` is remembered, in
    /// seconds (1–86400): a retry with the same `client_id` within it is acked
    /// with the original `id` instead of being stored twice.
    #[arg(long, env = "DEDUPE_WINDOW_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub dedupe_window_secs: u64,

    /// Delivery batches buffered between Redis and this gateway's dispatch
    /// (1–1000000); beyond it batches are dropped
    /// (`chat_gateway_delivery_overflows_total`) and every local connection
    /// catches up from history, so memory stays bounded and nothing is lost.
    #[arg(long, env = "DELIVERY_BUFFER_BATCHES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub delivery_buffer_batches: u64,

    /// `SO_SNDBUF` of accepted sockets in bytes; 0 keeps the kernel's
    /// auto-tuned default (up to 4 MB on Linux). Caps what a peer that stops reading can hold in
    /// kernel memory (the kernel doubles the value for bookkeeping).
    #[arg(long, env = "SOCKET_SEND_BUFFER_BYTES", default_value_t = 0)]
    pub socket_send_buffer_bytes: usize,

    /// Interval between server pings, in milliseconds (≥ 10).
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub ping_interval_ms: u64,

    /// A connection silent (no frame, no pong) for this long is closed with
    /// 1008, in ms (≥ 10).
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub idle_timeout_ms: u64,

    /// Most WebSocket and SSE connections this gateway holds; more get HTTP
    /// 503. Default: what `RLIMIT_NOFILE` leaves after `MAX_PENDING_HANDSHAKES`
    /// and 256 descriptors for the process's own use (at most an eighth of
    /// the limit): 18,720 at 20,000 descriptors. A larger value is lowered to
    /// that, with a warning, so the gateway answers 503 before `accept` fails
    /// with EMFILE.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Longest a TCP connection may stay in its HTTP phase (request headers,
    /// the request itself, and the upgrade) before it is closed, in ms
    /// (100–600000). Covers peers that send nothing, send headers slowly, or
    /// never finish; also ends plain HTTP keep-alive connections after this long.
    #[arg(long, env = "HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub handshake_timeout_ms: u64,

    /// Most accepted connections not yet upgraded to a WebSocket; at the cap
    /// the oldest is closed to admit the new one (1–1000000).
    #[arg(long, env = "MAX_PENDING_HANDSHAKES", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_pending_handshakes: u64,

    /// Most connections between their upgrade and their registration in
    /// Redis with the join history sent (1–1000000). Above it a new `/ws` or
    /// `/sse` request gets HTTP 503 `overloaded` with `Retry-After` before
    /// the upgrade: a connect storm Redis cannot keep up with is refused
    /// early and cheaply instead of accepted and then dropped.
    #[arg(long, env = "MAX_PENDING_REGISTRATIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_pending_registrations: u64,

    /// Most connection registrations sent to Redis in one pipeline (1–10000).
    #[arg(long, env = "REGISTRATION_BATCH_MAX", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub registration_batch_max: u64,

    /// Longest a registration waits for others to share its pipeline, in µs
    /// (0–100000; 0: only those already queued go along).
    #[arg(long, env = "REGISTRATION_BATCH_WAIT_US", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub registration_batch_wait_us: u64,

    /// Seconds a client refused for overload should wait before it
    /// reconnects: the `Retry-After` of the 503 and the hint in a 1013 close
    /// (1–3600). Clients add their own jitter on top.
    #[arg(long, env = "OVERLOAD_RETRY_AFTER_SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub overload_retry_after_secs: u64,

    /// Frames per second a connection may send (token bucket refill rate).
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 20.0)]
    pub rate_limit_per_sec: f64,

    /// Burst size of the per-connection token bucket.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 40.0)]
    pub rate_limit_burst: f64,

    /// Interval of the gateway's liveness heartbeat in Redis, in ms (≥ 10).
    #[arg(long, env = "HEARTBEAT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_ms: u64,

    /// Interval of the delivery-subscription self-probe, in ms (≥ 10). Three
    /// missed probes mark the subscription dead (`/readyz` turns 503) and
    /// re-establish it.
    #[arg(long, env = "PROBE_INTERVAL_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub probe_interval_ms: u64,

    /// Interval of the re-check of every local room, in ms: one round trip
    /// per room finds bans whose pub/sub notice was lost and rooms whose
    /// registration of this gateway is gone. At most 9000, so a ban reaches
    /// every connection within 10 s even without its notice.
    #[arg(long, env = "RECHECK_INTERVAL_MS", default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(10..=9_000))]
    pub recheck_interval_ms: u64,

    /// Seconds to close connections and deregister after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Announce `join` when a user's first connection to a room opens and
    /// `leave` when its last one closes (`true`/`false`, also `1`/`0`;
    /// presence itself is always kept).
    #[arg(long, env = "PRESENCE_EVENTS", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub presence_events: bool,

    /// Above this many distinct users a room gets `presence_count` (at most
    /// once per second, only when the count changed) instead of per-user
    /// `join` / `leave`. Set it like the workers'.
    #[arg(long, env = "PRESENCE_EVENTS_MAX_MEMBERS", default_value_t = 100)]
    pub presence_events_max_members: u64,

    /// Serve the demo page at `/` and the JavaScript client at `/client/…`
    /// (both embedded in the binary); `false` turns them off (`/` is then 404).
    /// The production overlay sets `false`.
    #[arg(long, env = "DEMO_PAGE", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub demo_page: bool,

    /// HTTP room reads (history pages, searches, presence, read receipts)
    /// running at once on this gateway; one that cannot start within 1 s
    /// gets 503 `overloaded` with `Retry-After: 1`.
    #[arg(long, env = "HTTP_READ_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub http_read_concurrency: u64,

    /// Key that signs anonymous sessions (auth off), shared by every gateway.
    /// Unset: a random key is generated once into Redis (`chat:session-key`)
    /// and shared from there.
    #[arg(long, env = "SESSION_SECRET", hide_env_values = true)]
    pub session_secret: Option<String>,

    /// Gateways the demo page may be pointed at with `?gateways=` besides its
    /// own origin: a comma list of `ws://` / `wss://` / `http(s)://` origins,
    /// or `scheme://host:*` for any port.
    #[arg(long, env = "DEMO_GATEWAYS", default_value = "")]
    pub demo_gateways: String,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub access: AccessArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub publish_hook: crate::hook::HookArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub redis: RedisArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
}

impl GatewayConfig {
    /// Limits of every append.
    pub fn append_limits(&self) -> crate::delivery::append::AppendLimits {
        crate::delivery::append::AppendLimits {
            shards: self.stream_shards,
            backlog_max: self.stream_backlog_max,
            dedupe_window_secs: self.dedupe_window_secs,
            replica_ack: self.redis.replica_ack(),
        }
    }

    /// Ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// Handshake timeout (the HTTP phase of a connection).
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Write timeout.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.max(1))
    }
    /// Probe interval of the delivery subscription.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
    /// Heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    /// Interval of the per-room re-check (bans, registration).
    pub fn recheck_interval(&self) -> Duration {
        Duration::from_millis(self.recheck_interval_ms)
    }
}

#[cfg(test)]
impl AccessArgs {
    /// Everything off, as with no env set: a base for unit tests.
    pub(crate) fn off() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_s: DEFAULT_JWKS_REFRESH_S,
            jwt_issuer: None,
            jwt_audience: None,
            allowed_origins: "*".into(),
            max_connections_per_ip: 0,
            trusted_proxies: String::new(),
            user_rate_limit_per_sec: 0.0,
            user_rate_limit_burst: 20.0,
            room_creation_per_min: 0.0,
            room_creation_burst: 60.0,
            api_keys: String::new(),
            api_keys_file: None,
            api_rate_limit_per_sec: 100.0,
            api_rate_limit_burst: 200.0,
        }
    }
}

/// Identity and access: JWT verification, Origin policy, per-IP and per-user
/// limits, and the keys of the HTTP publish API. Everything is off by
/// default, so spec clients keep working.
#[derive(Debug, Clone, clap::Args)]
pub struct AccessArgs {
    /// HS256 secret for client tokens, at least 32 bytes (a shorter one exits
    /// with 64); setting it (or `JWT_PUBLIC_KEY_FILE`, or `JWT_JWKS_URL`: at most
    /// one of the three, else exit 64) turns authentication on. Empty = unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RSA for RS256, EC P-256 for ES256) for client tokens;
    /// turns authentication on.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// URL (http:// or https://) of a JWKS document whose RS256 / ES256 keys
    /// verify client tokens, chosen by the token's `kid`; turns authentication
    /// on. Fetched at start (a failure warns and retries), every
    /// `JWT_JWKS_REFRESH_S`, and on an unknown `kid` at most once per 30 s.
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// Seconds between two fetches of `JWT_JWKS_URL` (1–86400; a token with an
    /// unknown `kid` also triggers one, at most once per 30 s).
    #[arg(long, env = "JWT_JWKS_REFRESH_S", default_value_t = DEFAULT_JWKS_REFRESH_S, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub jwt_jwks_refresh_s: u64,

    /// Required `iss` of client tokens (checked when set).
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of client tokens (checked when set); unset with
    /// authentication on logs a warning at start.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Browser origins allowed to open WebSockets: a comma list of exact
    /// origins, or `*`. Requests without an Origin header are not refused.
    #[arg(long, env = "ALLOWED_ORIGINS", default_value = "*")]
    pub allowed_origins: String,

    /// Most WebSockets one client IP may hold on this gateway; 0 = no limit.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Proxies (comma list of CIDRs) whose `X-Forwarded-For` is believed: the
    /// client IP is then the first untrusted hop from the right.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Messages per second one user (per IP when anonymous) may send across
    /// all gateways, kept in Redis; 0 = off. Costs one Lua call per message
    /// when on.
    #[arg(long, env = "USER_RATE_LIMIT_PER_SEC", default_value_t = 0.0)]
    pub user_rate_limit_per_sec: f64,

    /// Burst of the per-user budget.
    #[arg(long, env = "USER_RATE_LIMIT_BURST", default_value_t = 20.0)]
    pub user_rate_limit_burst: f64,

    /// New rooms (rooms without history) one user, or one IP when anonymous,
    /// may create per minute across all gateways; beyond it the message gets
    /// `rate_limited`. Costs one `EXISTS` on the first message of each
    /// connection. 0 = no limit.
    #[arg(long, env = "ROOM_CREATION_PER_MIN", default_value_t = 30.0)]
    pub room_creation_per_min: f64,

    /// Burst of the room-creation budget.
    #[arg(long, env = "ROOM_CREATION_BURST", default_value_t = 60.0)]
    pub room_creation_burst: f64,

    /// Keys of the HTTP publish API: a comma list of `name:key` or bare `key`
    /// entries (a bare one is named `key<N>`, N its 1-based position); its
    /// messages carry `user_id` `api:<name>`. Names are unique, 1–64
    /// characters without spaces. Without any key configured the API does not
    /// exist (404).
    #[arg(long, env = "API_KEYS", hide_env_values = true, default_value = "")]
    pub api_keys: String,

    /// File with more API keys, one `name:key` or bare `key` per line (`#`
    /// starts a comment); its lines are numbered after the API_KEYS entries.
    #[arg(long, env = "API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// Requests per second one API key may make on this gateway.
    #[arg(long, env = "API_RATE_LIMIT_PER_SEC", default_value_t = 100.0)]
    pub api_rate_limit_per_sec: f64,

    /// Burst of each API key's budget.
    #[arg(long, env = "API_RATE_LIMIT_BURST", default_value_t = 200.0)]
    pub api_rate_limit_burst: f64,
}
