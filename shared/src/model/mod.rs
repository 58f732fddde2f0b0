//! The data both binaries exchange, without any I/O: validated identifiers
//! ([`ids`]), the MessagePack records that travel through Redis
//! ([`envelope`]) and the per-connection user records of presence
//! ([`presence`]).

pub mod envelope;
pub mod ids;
pub mod presence;
