//! Pieces shared by `chat-gateway` and `chat-fanout-worker`.
//!
//! # Layout
//! - [`model`]: the data, no I/O: [`ids`] (validated newtypes such as
//!   `RoomId`, `Username`, so unvalidated input cannot reach Redis),
//!   [`envelope`] (the internal MessagePack records that travel gateway →
//!   stream → worker → gateway channel) and [`presence`] (per-connection user
//!   records and the presence answer).
//! - [`protocol`]: the client-facing JSON frames, their validation and the
//!   closed set of error codes.
//! - [`redis`]: the Redis handle (shared, once-only and dedicated
//!   connections, single or cluster), [`keys`] (every key, channel and group
//!   name, with the hash tags that keep per-room and per-shard work in one
//!   cluster slot), [`cluster`] (slots and evenly spread shard tags),
//!   [`connections`] (removing a gateway's connection entries) and [`tls`]
//!   (rustls provider, private CA and client certificate for `rediss://`).
//! - [`ephemeral`]: join, leave, typing and read frames, published to the
//!   room's gateways outside the `seq` sequence.
//! - Process plumbing: [`config`] (clap pieces flattened into both binaries),
//!   [`metrics`] (names, descriptions, the Prometheus recorder), [`shutdown`]
//!   (one SIGTERM/SIGINT handler), [`signing`] (the HMAC keys of a webhook or
//!   publish-hook secret and the Standard Webhooks signatures), [`telemetry`] (tracing set-up, `RUST_LOG`,
//!   `LOG_FORMAT`), [`startup`] (the start-up steps both binaries share).
//!
//! The modules of [`model`] and [`redis`] are also re-exported at the top
//! (`chat_shared::ids`, `chat_shared::keys`, …): the binaries name them so.
//!
//! Data flows: a gateway parses a [`protocol::ClientFrame`], stamps it into an
//! [`envelope::StreamEntry`] and appends it to the stream named by
//! [`keys::stream`]; a worker persists it under [`keys::messages`] and publishes an
//! [`envelope::DeliveryBatch`] to [`keys::gateway_channel`] of each owning gateway.

pub mod config;
pub mod ephemeral;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod redis;
pub mod shutdown;
pub mod signing;
pub mod startup;
pub mod telemetry;

pub use self::model::{envelope, ids, presence};
pub use self::redis::{cluster, connections, keys, tls};
