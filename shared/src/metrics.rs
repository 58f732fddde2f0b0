//! Metric names, their descriptions, and the Prometheus recorder.
//!
//! Names follow `chat_<subsystem>_<name>_<unit>`; counters end in `_total`;
//! label values come from small fixed sets (error codes, close reasons, Redis
//! operations), never a room, user or message id. Process CPU, memory and file
//! descriptors come from `metrics-process` as the standard `process_*` series.
//!
//! This file holds the names and the recorder; `describe` gives every name
//! its help text and unit, and `zero` registers the series that must exist
//! from the start ([`register_at_zero`]).

mod describe;
mod zero;

pub use metrics_exporter_prometheus::PrometheusHandle;
pub use zero::{register_at_zero, Role};

use describe::describe_all;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Gauge: client connections open on this gateway, by `transport`.
pub const GW_CONNECTIONS: &str = "chat_gateway_connections";
/// Counter: connections accepted (upgraded, or streaming), by `transport`.
pub const GW_CONNECTIONS_OPENED: &str = "chat_gateway_connections_opened_total";
/// Counter: connections closed, by `reason` and `transport`.
pub const GW_CONNECTIONS_CLOSED: &str = "chat_gateway_connections_closed_total";
/// The `transport` label values of the connection metrics: WebSocket
/// (`/ws`) and server-sent events (`/sse`).
pub const GW_TRANSPORTS: &[&str] = &["ws", "sse"];
/// Counter: connection requests refused before serving, by `code` and `transport`.
pub const GW_CONNECTIONS_REJECTED: &str = "chat_gateway_connections_rejected_total";
/// Counter: inbound frames by `result` (`accepted` or an error code).
pub const GW_FRAMES_RECEIVED: &str = "chat_gateway_frames_received_total";
/// Counter: frames refused by the per-connection rate limit.
pub const GW_RATE_LIMITED: &str = "chat_gateway_rate_limited_frames_total";
/// Gauge: rooms with at least one connection on this gateway.
pub const GW_ROOMS: &str = "chat_gateway_rooms";
/// Counter: message frames queued to local connections.
pub const GW_MESSAGES_DELIVERED: &str = "chat_gateway_messages_delivered_total";
/// Counter: connections dropped as slow consumers (queue full or write timeout).
pub const GW_SLOW_CONSUMERS: &str = "chat_gateway_slow_consumer_disconnects_total";
/// Histogram: time to append a message to its stream (XADD round trip).
pub const GW_APPEND_SECONDS: &str = "chat_gateway_stream_append_seconds";
/// Histogram: messages stored per append round trip (one connection's batch).
pub const GW_APPEND_BATCH: &str = "chat_gateway_append_batch_messages";
/// Histogram: gateway stamp → delivery into local queues.
pub const GW_DELIVERY_LATENCY_SECONDS: &str = "chat_gateway_delivery_latency_seconds";
/// Counter: failed Redis operations, by `op`.
pub const GW_REDIS_ERRORS: &str = "chat_gateway_redis_errors_total";
/// Counter: times the delivery subscription was (re-)established.
pub const GW_SUBSCRIPTIONS: &str = "chat_gateway_subscriptions_total";
/// Counter: times the delivery buffer overflowed (batches dropped, then
/// recovered from history by every local connection).
pub const GW_DELIVERY_OVERFLOWS: &str = "chat_gateway_delivery_overflows_total";
/// Counter: HTTP publish requests, by `result` (`accepted`, `unauthorized`,
/// `rate_limited`, `unavailable`, `rejected`).
pub const GW_API_REQUESTS: &str = "chat_gateway_api_publish_requests_total";
/// Histogram: time a message or edit waited for the pre-publish hook's
/// verdict (a free slot, the request and its answer).
pub const GW_PUBLISH_HOOK_SECONDS: &str = "chat_gateway_publish_hook_seconds";
/// Counter: pre-publish hook calls, by `outcome` (`accept`, `reject`,
/// `modify`, `timeout`, `error`, `fail_open`).
pub const GW_PUBLISH_HOOK_OUTCOMES: &str = "chat_gateway_publish_hook_outcomes_total";
/// Counter: history searches answered (`GET /rooms/{room}/messages?q=`).
pub const GW_SEARCHES: &str = "chat_gateway_searches_total";
/// Counter: room-scoped HTTP requests refused before their route ran, by
/// `route` (`read`, `write`) and `code` (`unauthorized`, `forbidden`,
/// `banned`, `rate_limited`, `overloaded`, `unavailable`).
pub const GW_HTTP_REFUSED: &str = "chat_gateway_http_refused_total";
/// Counter: bans placed and lifted through this gateway, by `op`
/// (`placed`, `lifted`), and connections closed for a ban found by the
/// periodic re-check rather than by its notice (`rechecked`).
pub const GW_BANS: &str = "chat_gateway_bans_total";
/// Counter: messages refused because they would create a room beyond the
/// sender's room-creation budget.
pub const GW_ROOMS_REFUSED: &str = "chat_gateway_room_creations_refused_total";
/// Counter: messages acked as repeats of a `client_id` already stored.
pub const GW_APPEND_REPEATS: &str = "chat_gateway_append_repeats_total";
/// Counter: appends refused because the shard's stream backlog is full.
pub const GW_BACKLOG_REFUSALS: &str = "chat_gateway_backlog_refusals_total";
/// Counter: delivery gaps that history could no longer fill (the missing
/// messages were trimmed before the connection caught up).
pub const GW_GAPS_TRIMMED: &str = "chat_gateway_gaps_trimmed_total";
/// Counter: sockets closed abortively (RST) because the close frame could not
/// be written: the peer stopped reading.
pub const GW_SOCKETS_ABORTED: &str = "chat_gateway_sockets_aborted_total";
/// Gauge: TCP connections accepted and still in their HTTP phase (not yet
/// upgraded to a WebSocket, not yet closed).
pub const GW_PENDING_CONNECTIONS: &str = "chat_gateway_pending_connections";
/// Counter: connections closed in their HTTP phase by the gateway, by
/// `reason` (`timeout`, `keepalive`, `shed`, `fd_limit`).
pub const GW_PENDING_CLOSED: &str = "chat_gateway_pending_connections_closed_total";
/// Counter: failed `accept` calls, by `kind` (`fd_limit`, `no_memory`,
/// `connection`, `other`).
pub const GW_ACCEPT_ERRORS: &str = "chat_gateway_accept_errors_total";
/// Gauge: connections between their upgrade and the end of their opening
/// (registered in Redis, join history sent); capped by
/// `MAX_PENDING_REGISTRATIONS`.
pub const GW_PENDING_REGISTRATIONS: &str = "chat_gateway_pending_registrations";
/// Counter: connections refused because registrations are backed up, by
/// `reason`: `pending_registrations` and `redis_timeouts` (503 before the
/// upgrade), `registration_queue`, `registration_timeout` and
/// `history_timeout` (1013 after it).
pub const GW_CONNECTIONS_SHED: &str = "chat_gateway_connections_shed_total";
/// The `reason` labels of [`GW_CONNECTIONS_SHED`].
pub const GW_SHED_REASONS: &[&str] = &[
    "pending_registrations",
    "redis_timeouts",
    "registration_queue",
    "registration_timeout",
    "history_timeout",
];
/// Histogram: connection registrations sent to Redis in one pipeline.
pub const GW_REGISTRATION_BATCH: &str = "chat_gateway_registration_batch_connections";
/// Counter: ephemeral frames (join, leave, typing, read) queued to local
/// connections.
pub const GW_EPHEMERAL_DELIVERED: &str = "chat_gateway_ephemeral_delivered_total";
/// Counter: ephemeral frames dropped because the member's queue was full
/// (best-effort: the connection is not kicked for them).
pub const GW_EPHEMERAL_DROPPED: &str = "chat_gateway_ephemeral_dropped_total";
/// Counter: typing frames dropped by the one-per-second-per-connection limit.
pub const GW_TYPING_THROTTLED: &str = "chat_gateway_typing_throttled_total";
/// Counter: ephemeral events that could not be published, by `kind`
/// (`join`, `leave`, `typing`, `read`).
pub const GW_EPHEMERAL_PUBLISH_ERRORS: &str = "chat_gateway_ephemeral_publish_errors_total";

/// Counter: messages newly written to history.
pub const WK_PERSISTED: &str = "chat_worker_messages_persisted_total";
/// Counter: stream entries that were already applied (takeover re-processing).
pub const WK_DUPLICATES: &str = "chat_worker_messages_duplicate_total";
/// Counter: stream entries that could not be decoded (acked and dropped).
pub const WK_UNDECODABLE: &str = "chat_worker_entries_undecodable_total";
/// Counter: stream entries of a newer envelope version, left pending for a
/// newer worker (counted when first read).
pub const WK_UNKNOWN_VERSION: &str = "chat_worker_entries_unknown_version_total";
/// Gauge: entries a shard task leaves pending for a newer worker (entries
/// of a newer envelope version and their rooms' later entries), by `shard`.
/// Released with `chat-fanout-worker release-held --shard <n>`.
pub const WK_HELD_ENTRIES: &str = "chat_worker_held_entries";
/// Histogram: entries per processed batch.
pub const WK_BATCH_SIZE: &str = "chat_worker_batch_size_messages";
/// Histogram: gateway stamp → worker publish.
pub const WK_PUBLISH_LATENCY_SECONDS: &str = "chat_worker_publish_latency_seconds";
/// Counter: delivery batches published to gateway channels.
pub const WK_PUBLISHES: &str = "chat_worker_publishes_total";
/// Counter: failed Redis operations, by `op`.
pub const WK_REDIS_ERRORS: &str = "chat_worker_redis_errors_total";
/// Gauge: stream shards this worker processes.
pub const WK_SHARDS_OWNED: &str = "chat_worker_shards_owned";
/// Gauge: entries in this worker's shards not yet read by the group (Redis `lag`).
pub const WK_STREAM_LAG: &str = "chat_worker_stream_lag_entries";
/// Gauge: entries of one shard not yet read by the group, by `shard` (set by
/// the worker holding it; 0 from a worker that no longer does).
pub const WK_SHARD_LAG: &str = "chat_worker_shard_lag_entries";
/// Gauge: entries in this worker's shards read but not yet acked.
pub const WK_STREAM_PENDING: &str = "chat_worker_stream_pending_entries";
/// Counter: users whose last connection the janitor removed (a dead
/// gateway's), announced with a `leave` when `PRESENCE_EVENTS` is on.
pub const WK_PRESENCE_LEAVES: &str = "chat_worker_presence_leaves_total";
/// Counter: records POSTed to the webhook and answered with a 2xx.
pub const WK_WEBHOOK_EVENTS_SENT: &str = "chat_worker_webhook_events_sent_total";
/// Counter: webhook requests answered with a 2xx.
pub const WK_WEBHOOK_REQUESTS_SENT: &str = "chat_worker_webhook_requests_sent_total";
/// Counter: failed webhook requests, by `kind` (`status`, `timeout`, `transport`).
pub const WK_WEBHOOK_REQUESTS_FAILED: &str = "chat_worker_webhook_requests_failed_total";
/// Counter: webhook requests repeated after a failure.
pub const WK_WEBHOOK_RETRIES: &str = "chat_worker_webhook_retries_total";
/// Counter: records never delivered to the webhook, by `reason` (`queue_full`:
/// the outbox held `WEBHOOK_QUEUE_MAX` records; `gave_up`: every attempt failed).
pub const WK_WEBHOOK_EVENTS_DROPPED: &str = "chat_worker_webhook_events_dropped_total";
/// Histogram: persistence of a record → the webhook's 2xx for it.
pub const WK_WEBHOOK_LATENCY_SECONDS: &str = "chat_worker_webhook_delivery_latency_seconds";
/// Gauge: records waiting in the webhook outboxes of this worker's shards.
pub const WK_WEBHOOK_QUEUE: &str = "chat_worker_webhook_queue_entries";

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// The installed recorder plus the process collector; renders `/metrics`.
#[derive(Clone)]
pub struct Exporter {
    handle: PrometheusHandle,
    process: std::sync::Arc<metrics_process::Collector>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Prometheus text exposition of every metric, with fresh process metrics.
    pub fn render(&self) -> String {
        self.process.collect();
        self.handle.render()
    }

    /// Drains histograms' internal buffers every 5 s until `stop`.
    pub fn spawn_upkeep(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    _ = stop.cancelled() => break,
                }
            }
        })
    }
}

/// Installs the global recorder and describes every metric once.
///
/// # Errors
/// Fails when a recorder is already installed.
pub fn install() -> Result<Exporter, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_messages".into()), BATCH_BUCKETS)?
        .install_recorder()?;
    describe_all();
    let process = metrics_process::Collector::default();
    process.describe();
    Ok(Exporter {
        handle,
        process: std::sync::Arc::new(process),
    })
}
