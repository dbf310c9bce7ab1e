//! The core hypercalls' handlers: console, lifecycle (abort, boot trace),
//! memory, poll and the snapshot point. Device hypercalls live with their
//! device (`devices/*/hypercalls.rs`); the one `match` from number to
//! handler is `vmm::dispatch`.
//!
//! Each handler takes exactly the components it acts on and goes through
//! [`crate::call`]: the argument struct is checked before any side effect,
//! and a guest that passes garbage gets an error code.

pub mod console;
pub mod lifecycle;
pub mod mem;
pub mod poll;
pub mod snapshot;
