//! The edge: accepting a connection and deciding whether it may stay.
//!
//! The accept loop ([`accept`]) and each connection's bounded HTTP phase
//! ([`handshake`]) on a tuned listener ([`listener`]); who a client is
//! ([`auth`] with [`jwks`], [`session`] for anonymous clients, [`api_keys`]
//! for server-side ones); what it may spend ([`access`]: origins, client IPs
//! and the per-IP cap; [`rate_limit`], [`user_limit`]); [`overload`] for
//! `/readyz`; and [`recheck`], which keeps those decisions true over time.

pub mod accept;
pub mod access;
pub mod api_keys;
pub mod auth;
pub mod handshake;
pub mod jwks;
pub mod listener;
pub mod overload;
pub mod rate_limit;
pub mod recheck;
pub mod session;
pub mod user_limit;
