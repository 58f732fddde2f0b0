//! The HTTP surface: the routes ([`routes`]), the access guard in front of
//! every room route ([`room_access`]), the publish API ([`publish`]), the
//! demo page ([`demo`]) and the JSON error every route answers with
//! ([`error`]).

pub mod demo;
pub mod error;
pub mod publish;
pub mod room_access;
pub mod routes;
pub(crate) mod send;
