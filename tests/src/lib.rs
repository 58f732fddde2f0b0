//! Shared helpers live in `tests/common`; this crate only hosts the integration tests.
