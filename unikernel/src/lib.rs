//! Duet: the unikernel library Duet applications link against.
//!
//! A Duet guest runs in ring 3 of an identity-mapped address space that the
//! monitor built; it never executes a privileged instruction. Everything a
//! kernel would do (I/O, time, memory mapping) it asks of the monitor through
//! hypercalls defined in [`duet_abi`].
//!
//! Boot order (see `start.rs`): the monitor enters `_start` with the boot info's
//! address → the ABI version is checked → the heap is set up → the
//! application's `main` (declared with [`main!`]) runs → its status goes to
//! the monitor through the exit hypercall.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! duet::main!(main);
//! fn main() {
//!     duet::println!("hello");
//! }
//! ```
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

pub mod allocator;
pub mod block;
pub mod console;
pub mod env;
mod fmtbuf;
pub mod header;
pub mod hypercall;
pub mod identity;
pub mod mem;
pub mod net;
mod panic;
pub mod rand;
pub mod rt;
pub mod start;
pub mod time;
mod vblk;
pub mod virtio;

pub use duet_abi as abi;
pub use identity::{identity, shutdown_requested, snapshot_point, Identity};
pub use rt::{exit, Termination};

/// Declares the application's entry point.
///
/// The function may return `()`, an `i32` exit status, or a `Result` whose
/// error is printed before exiting with status 1. Its path is relative to
/// the crate root (`duet::main!(main)`, `duet::main!(app::run)`).
///
/// The macro defines the image's `main` symbol, as a C program has: `_start`
/// calls it, and a debugger finds it by that name (`break main`).
#[macro_export]
macro_rules! main {
    ($main:path) => {
        #[doc(hidden)]
        use $main as __duet_app_main;
        #[doc(hidden)]
        mod __duet {
            #[unsafe(no_mangle)]
            pub extern "Rust" fn main() -> i32 {
                $crate::Termination::report(super::__duet_app_main())
            }
        }
    };
}
