//! The help text and unit of every metric, given once when the recorder is
//! installed ([`super::install`]).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

// Every metric name is described here.
use super::*;

/// Describes every metric of both binaries.
pub(super) fn describe_all() {
    describe_counter!(
        GW_EPHEMERAL_DELIVERED,
        Unit::Count,
        "Ephemeral frames (join, leave, typing, read) queued to local connections"
    );
    describe_counter!(
        GW_EPHEMERAL_DROPPED,
        Unit::Count,
        "Ephemeral frames dropped because the member's outbound queue was full"
    );
    describe_counter!(
        GW_TYPING_THROTTLED,
        Unit::Count,
        "Typing frames dropped by the one-per-second-per-connection limit"
    );
    describe_counter!(
        GW_EPHEMERAL_PUBLISH_ERRORS,
        Unit::Count,
        "Ephemeral events that could not be published, by kind"
    );
    describe_counter!(
        WK_PRESENCE_LEAVES,
        Unit::Count,
        "Users whose last connection the janitor removed with a dead gateway's entries"
    );
    describe_counter!(
        GW_RATE_LIMITED,
        Unit::Count,
        "Frames refused by the per-connection rate limit"
    );
    describe_gauge!(
        GW_ROOMS,
        Unit::Count,
        "Rooms with at least one connection on this gateway"
    );
    describe_gauge!(
        WK_STREAM_LAG,
        Unit::Count,
        "Entries in this worker's shards not yet read by the consumer group"
    );
    describe_gauge!(
        WK_STREAM_PENDING,
        Unit::Count,
        "Entries in this worker's shards read but not yet acked"
    );
    describe_gauge!(
        GW_CONNECTIONS,
        Unit::Count,
        "Client connections open on this gateway, by transport (ws, sse)"
    );
    describe_counter!(
        GW_CONNECTIONS_OPENED,
        Unit::Count,
        "Client connections accepted (upgraded or streaming), by transport"
    );
    describe_counter!(
        GW_CONNECTIONS_CLOSED,
        Unit::Count,
        "Client connections closed, by reason and transport"
    );
    describe_counter!(
        GW_CONNECTIONS_REJECTED,
        Unit::Count,
        "Connection requests (/ws, /sse) refused before serving, by code and transport"
    );
    describe_counter!(
        GW_FRAMES_RECEIVED,
        Unit::Count,
        "Inbound frames, by result (accepted or error code)"
    );
    describe_counter!(
        GW_MESSAGES_DELIVERED,
        Unit::Count,
        "Message frames queued to local connections"
    );
    describe_counter!(
        GW_SLOW_CONSUMERS,
        Unit::Count,
        "Connections closed as slow consumers (outbound queue full or write timeout)"
    );
    describe_histogram!(
        GW_APPEND_SECONDS,
        Unit::Seconds,
        "Time to append a message to its Redis stream"
    );
    describe_histogram!(
        GW_APPEND_BATCH,
        Unit::Count,
        "Messages of one connection stored per append round trip"
    );
    describe_histogram!(
        GW_DELIVERY_LATENCY_SECONDS,
        Unit::Seconds,
        "Gateway stamp to delivery into local queues"
    );
    describe_counter!(
        GW_REDIS_ERRORS,
        Unit::Count,
        "Failed Redis operations on the gateway, by op"
    );
    describe_counter!(
        GW_SUBSCRIPTIONS,
        Unit::Count,
        "Delivery channel subscriptions established"
    );
    describe_counter!(
        GW_DELIVERY_OVERFLOWS,
        Unit::Count,
        "Delivery buffer overflows (batches dropped, recovered from history)"
    );
    describe_counter!(
        GW_API_REQUESTS,
        Unit::Count,
        "HTTP publish requests, by result"
    );
    describe_histogram!(
        GW_PUBLISH_HOOK_SECONDS,
        Unit::Seconds,
        "Time a message or edit waited for the pre-publish hook's verdict"
    );
    describe_counter!(
        GW_PUBLISH_HOOK_OUTCOMES,
        Unit::Count,
        "Pre-publish hook calls, by outcome"
    );
    describe_counter!(GW_SEARCHES, Unit::Count, "History searches answered");
    describe_counter!(
        GW_HTTP_REFUSED,
        Unit::Count,
        "Room-scoped HTTP requests refused by the access checks, by route and code"
    );
    describe_counter!(GW_BANS, Unit::Count, "Bans placed and lifted, by op");
    describe_counter!(
        GW_ROOMS_REFUSED,
        Unit::Count,
        "Messages refused beyond the sender's room-creation budget"
    );
    describe_counter!(
        GW_APPEND_REPEATS,
        Unit::Count,
        "Messages acked as repeats of a client_id already stored"
    );
    describe_counter!(
        GW_BACKLOG_REFUSALS,
        Unit::Count,
        "Appends refused because the shard's stream backlog is full"
    );
    describe_counter!(
        GW_GAPS_TRIMMED,
        Unit::Count,
        "Delivery gaps history could no longer fill (missing messages trimmed)"
    );
    describe_counter!(
        GW_SOCKETS_ABORTED,
        Unit::Count,
        "Sockets reset because the peer did not take the close frame"
    );
    describe_gauge!(
        GW_PENDING_CONNECTIONS,
        Unit::Count,
        "Accepted connections not yet upgraded to a WebSocket"
    );
    describe_counter!(
        GW_PENDING_CLOSED,
        Unit::Count,
        "Connections closed by the gateway before their upgrade, by reason"
    );
    describe_gauge!(
        GW_PENDING_REGISTRATIONS,
        Unit::Count,
        "Connections between their upgrade and their registration in Redis with the join history sent"
    );
    describe_counter!(
        GW_CONNECTIONS_SHED,
        Unit::Count,
        "Connections refused because registrations are backed up, by reason"
    );
    describe_histogram!(
        GW_REGISTRATION_BATCH,
        Unit::Count,
        "Connection registrations sent to Redis in one pipeline"
    );
    describe_counter!(
        GW_ACCEPT_ERRORS,
        Unit::Count,
        "Failed accept calls on the listening socket, by kind"
    );
    describe_counter!(
        WK_PERSISTED,
        Unit::Count,
        "Messages newly written to history"
    );
    describe_counter!(
        WK_DUPLICATES,
        Unit::Count,
        "Stream entries already applied before (re-processing)"
    );
    describe_counter!(
        WK_UNDECODABLE,
        Unit::Count,
        "Stream entries that could not be decoded"
    );
    describe_gauge!(
        WK_HELD_ENTRIES,
        Unit::Count,
        "Entries left pending for a newer worker, by shard"
    );
    describe_counter!(
        WK_UNKNOWN_VERSION,
        Unit::Count,
        "Stream entries of a newer envelope version, left pending for a newer worker"
    );
    describe_histogram!(
        WK_BATCH_SIZE,
        Unit::Count,
        "Stream entries per processed batch"
    );
    describe_histogram!(
        WK_PUBLISH_LATENCY_SECONDS,
        Unit::Seconds,
        "Gateway stamp to worker publish"
    );
    describe_counter!(
        WK_PUBLISHES,
        Unit::Count,
        "Delivery batches published to gateway channels"
    );
    describe_counter!(
        WK_REDIS_ERRORS,
        Unit::Count,
        "Failed Redis operations on the worker, by op"
    );
    describe_counter!(
        WK_WEBHOOK_EVENTS_SENT,
        Unit::Count,
        "Records delivered to the webhook (answered with a 2xx)"
    );
    describe_counter!(
        WK_WEBHOOK_REQUESTS_SENT,
        Unit::Count,
        "Webhook requests answered with a 2xx"
    );
    describe_counter!(
        WK_WEBHOOK_REQUESTS_FAILED,
        Unit::Count,
        "Failed webhook requests, by kind (status, timeout, transport)"
    );
    describe_counter!(
        WK_WEBHOOK_RETRIES,
        Unit::Count,
        "Webhook requests repeated after a failure"
    );
    describe_counter!(
        WK_WEBHOOK_EVENTS_DROPPED,
        Unit::Count,
        "Records never delivered to the webhook, by reason (queue_full, gave_up)"
    );
    describe_histogram!(
        WK_WEBHOOK_LATENCY_SECONDS,
        Unit::Seconds,
        "Persistence of a record to the webhook's 2xx for it"
    );
    describe_gauge!(
        WK_WEBHOOK_QUEUE,
        Unit::Count,
        "Records waiting in the webhook outboxes of this worker's shards"
    );
    describe_gauge!(
        WK_SHARD_LAG,
        Unit::Count,
        "Entries of one stream shard not yet read by the consumer group, by shard"
    );
    describe_gauge!(
        WK_SHARDS_OWNED,
        Unit::Count,
        "Stream shards this worker processes"
    );
}
