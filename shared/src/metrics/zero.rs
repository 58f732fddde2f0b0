//! The series that exist from the start: every counter and gauge of a role
//! at 0, and the incident counters for each of their known labels.

// The names of every series registered here.
use super::*;

/// Whose series [`register_at_zero`] registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `chat-gateway`.
    Gateway,
    /// `chat-fanout-worker`.
    Worker,
}

/// Label values of the incident counters that exist from the start.
const GW_REDIS_OPS: &[&str] = &[
    "append",
    "gap_fill",
    "heartbeat",
    "history",
    "probe",
    "register",
    "replica_ack",
    "reregister",
    "reset",
    "subscribe",
    "subscription_lost",
    "subscription_silent",
    "unregister",
];
const GW_CLOSE_REASONS: &[&str] = &[
    "client",
    "shutdown",
    "slow_consumer",
    "idle_timeout",
    "unavailable",
    "gap_unfilled",
    "too_big",
    "invalid_utf8",
    "protocol_error",
    "socket_error",
    "token_expired",
    "banned",
    "overloaded",
];
const GW_REJECT_CODES: &[&str] = &[
    "unauthorized",
    "forbidden",
    "forbidden_origin",
    "banned",
    "too_many_connections",
    "unavailable",
    "overloaded",
];
const GW_HTTP_REFUSAL_CODES: &[&str] = &[
    "unauthorized",
    "forbidden",
    "banned",
    "rate_limited",
    "overloaded",
    "unavailable",
];
/// The `outcome` labels of [`GW_PUBLISH_HOOK_OUTCOMES`].
const PUBLISH_HOOK_OUTCOMES: &[&str] = &[
    "accept",
    "reject",
    "modify",
    "timeout",
    "error",
    "fail_open",
];
const WK_REDIS_OPS: &[&str] = &[
    "connect",
    "heartbeat",
    "janitor",
    "lease",
    "presence_leave",
    "replica_ack",
    "shard",
    "webhook",
];

/// Registers every counter and gauge of `role` at 0, and the incident
/// counters (Redis errors, closes by reason, refusals by code, …) for each of
/// their known labels. A fresh process then exports them before the first
/// incident: a dashboard panel shows 0 rather than "No data", and a
/// `rate()`-based alert has a series to fire on (Prometheus's
/// instrumentation guide: avoid missing metrics). Histograms appear with
/// their first observation.
pub fn register_at_zero(role: Role) {
    match role {
        Role::Gateway => {
            for name in [
                GW_RATE_LIMITED,
                GW_MESSAGES_DELIVERED,
                GW_SLOW_CONSUMERS,
                GW_SUBSCRIPTIONS,
                GW_DELIVERY_OVERFLOWS,
                GW_SEARCHES,
                GW_ROOMS_REFUSED,
                GW_APPEND_REPEATS,
                GW_BACKLOG_REFUSALS,
                GW_GAPS_TRIMMED,
                GW_SOCKETS_ABORTED,
                GW_EPHEMERAL_DELIVERED,
                GW_EPHEMERAL_DROPPED,
                GW_TYPING_THROTTLED,
            ] {
                metrics::counter!(name).increment(0);
            }
            for name in [GW_ROOMS, GW_PENDING_CONNECTIONS, GW_PENDING_REGISTRATIONS] {
                metrics::gauge!(name).set(0.0);
            }
            for op in GW_REDIS_OPS {
                metrics::counter!(GW_REDIS_ERRORS, "op" => *op).increment(0);
            }
            for transport in GW_TRANSPORTS {
                metrics::gauge!(GW_CONNECTIONS, "transport" => *transport).set(0.0);
                metrics::counter!(GW_CONNECTIONS_OPENED, "transport" => *transport).increment(0);
                for reason in GW_CLOSE_REASONS {
                    metrics::counter!(GW_CONNECTIONS_CLOSED, "reason" => *reason, "transport" => *transport)
                        .increment(0);
                }
                for code in GW_REJECT_CODES {
                    metrics::counter!(GW_CONNECTIONS_REJECTED, "code" => *code, "transport" => *transport)
                        .increment(0);
                }
            }
            for route in ["read", "write"] {
                for code in GW_HTTP_REFUSAL_CODES {
                    metrics::counter!(GW_HTTP_REFUSED, "route" => route, "code" => *code)
                        .increment(0);
                }
            }
            for op in ["placed", "lifted", "rechecked"] {
                metrics::counter!(GW_BANS, "op" => op).increment(0);
            }
            for reason in ["shed", "timeout", "keepalive", "fd_limit"] {
                metrics::counter!(GW_PENDING_CLOSED, "reason" => reason).increment(0);
            }
            for reason in GW_SHED_REASONS {
                metrics::counter!(GW_CONNECTIONS_SHED, "reason" => *reason).increment(0);
            }
            for kind in ["fd_limit", "no_memory", "connection", "other"] {
                metrics::counter!(GW_ACCEPT_ERRORS, "kind" => kind).increment(0);
            }
            for outcome in PUBLISH_HOOK_OUTCOMES {
                metrics::counter!(GW_PUBLISH_HOOK_OUTCOMES, "outcome" => *outcome).increment(0);
            }
        }
        Role::Worker => {
            for name in [
                WK_PERSISTED,
                WK_DUPLICATES,
                WK_UNDECODABLE,
                WK_UNKNOWN_VERSION,
                WK_PUBLISHES,
                WK_PRESENCE_LEAVES,
                WK_WEBHOOK_EVENTS_SENT,
                WK_WEBHOOK_REQUESTS_SENT,
                WK_WEBHOOK_RETRIES,
            ] {
                metrics::counter!(name).increment(0);
            }
            for name in [
                WK_SHARDS_OWNED,
                WK_STREAM_LAG,
                WK_STREAM_PENDING,
                WK_WEBHOOK_QUEUE,
            ] {
                metrics::gauge!(name).set(0.0);
            }
            for op in WK_REDIS_OPS {
                metrics::counter!(WK_REDIS_ERRORS, "op" => *op).increment(0);
            }
            for reason in ["gave_up", "queue_full"] {
                metrics::counter!(WK_WEBHOOK_EVENTS_DROPPED, "reason" => reason).increment(0);
            }
        }
    }
}
