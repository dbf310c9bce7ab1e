//! Entry points for the fuzz targets (`fuzz/`, run with `cargo xtask
//! fuzz`; `docs/fuzzing.md`). Compiled only with the `fuzzing` feature.
//!
//! Each target hands what libFuzzer generated to one function here, which
//! drives the monitor's own code for one kind of untrusted input: the
//! guest's hypercalls ([`hypercalls`]), image files ([`loader`]), snapshot
//! state ([`snapshot`]), a migration peer's frames ([`migration`]), control
//! requests ([`control`]) and the command line's device and memory options
//! ([`cli`]). Inputs are `arbitrary` structures where the format has
//! checksums or shapes random bytes would rarely get past, with a raw-bytes
//! variant beside them; the harness repairs nothing the monitor should
//! check itself.
//!
//! The monitor must never panic on any of these inputs: every panic, abort
//! or sanitizer report a target finds is a monitor bug. A few targets also
//! assert properties the monitor promises (a hypercall never writes memory
//! the guest may not write; a restored guest's writable memory stays out
//! of the monitor's pages); those asserts are part of the harness.

pub mod cli;
pub mod control;
pub mod elf;
pub mod gen;
pub mod hypercalls;
pub mod loader;
pub mod migration;
pub mod snapshot;
#[cfg(test)]
mod tests;
