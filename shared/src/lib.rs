//! Pieces shared by `chat-gateway` and `chat-fanout-worker`.
//!
//! # Layout
//! - [`ids`]: validated newtypes (`RoomId`, `Username`, …) so unvalidated input
//!   cannot reach Redis.
//! - [`protocol`]: the client-facing JSON frames, their validation and the closed
//!   set of error codes.
//! - [`envelope`]: the internal MessagePack records that travel gateway → stream →
//!   worker → gateway channel.
//! - [`keys`]: every Redis key, channel and group name, with the hash tags that
//!   keep per-room and per-shard work in one cluster slot.
//! - [`cluster`]: Redis Cluster slots of keys and commands, and shard tags
//!   spread evenly over the slots.
//! - [`connections`]: removing a gateway's connection entries (janitor, restart).
//! - [`presence`]: the per-connection user records and the presence answer.
//! - [`ephemeral`]: join, leave, typing and read frames, published to the
//!   room's gateways outside the `seq` sequence.
//! - [`config`]: clap pieces flattened into both binaries (Redis, logging).
//! - [`redis`]: connection pool and dedicated-connection setup.
//! - [`tls`]: rustls crypto provider and the private CA / client certificate
//!   files for `rediss://`.
//! - [`metrics`]: metric names, their descriptions and the Prometheus recorder.
//! - [`signing`]: the HMAC keys of a `WEBHOOK_SECRET` or
//!   `PUBLISH_HOOK_SECRET` and the Standard Webhooks signature headers.
//! - [`shutdown`]: the one SIGTERM/SIGINT handler feeding a `CancellationToken`.
//! - [`telemetry`]: tracing subscriber set-up (`RUST_LOG`, `LOG_FORMAT`).
//! - [`startup`]: the start-up steps both binaries share (identity, shard
//!   guard, metrics, listener, signals).
//!
//! Data flows: a gateway parses a [`protocol::ClientFrame`], stamps it into an
//! [`envelope::StreamEntry`] and appends it to the stream named by
//! [`keys::stream`]; a worker persists it under [`keys::messages`] and publishes an
//! [`envelope::DeliveryBatch`] to [`keys::gateway_channel`] of each owning gateway.

pub mod cluster;
pub mod config;
pub mod connections;
pub mod envelope;
pub mod ephemeral;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod redis;
pub mod shutdown;
pub mod signing;
pub mod startup;
pub mod telemetry;
pub mod tls;
