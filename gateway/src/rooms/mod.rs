//! The room features: history reads ([`history`], [`search`]), the checks a
//! room event needs ([`events`]), this gateway's registrations and presence
//! ([`presence`], [`presence_events`], [`room_index`] for the janitor;
//! [`registrar`] admits and batches new registrations over [`batcher`]), read receipts ([`receipts`]), the
//! typing limit ([`typing`]) and bans ([`bans`]).

pub mod bans;
pub mod batcher;
pub mod events;
pub mod history;
pub mod presence;
pub mod presence_events;
pub mod receipts;
pub mod registrar;
pub mod room_index;
pub mod search;
pub mod typing;
