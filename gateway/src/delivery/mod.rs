//! The path of a message through this gateway: screened by the
//! application's pre-publish hook when there is one ([`screen`]), appended
//! to its room's stream ([`append`], of a [`draft`]), then, once a worker publishes it, received on this
//! gateway's channel ([`subscriber`]), handed to the local registry of
//! connections per room ([`registry`]) and queued to each member
//! ([`queue`]).

pub mod append;
pub mod draft;
pub mod queue;
pub mod registry;
pub mod screen;
pub mod subscriber;
