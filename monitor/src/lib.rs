//! The Duet monitor: a minimal KVM monitor for Duet unikernels.
//!
//! The guest runs in ring 3 and asks for everything through hypercalls
//! ([`duet_abi::hypercall`]); the monitor owns every privileged structure
//! (page tables, GDT, IDT, TSS, the exception stubs) and emulates no
//! hardware. See `docs/architecture.md` for the layers:
//!
//! * bottom: [`memory`] (guest memory, dirty tracking, resident pages),
//!   [`kvm`], [`layout`], [`persist`], [`call`], [`outcome`], [`contract`],
//!   [`errors`], [`access`];
//! * components, each with its `Persist` impl: [`cpu`], [`paging`],
//!   [`heap`], [`clock`], [`identity`], [`loader`], [`bootinfo`],
//!   [`devices`], and the core [`hypercall`] handlers; [`vm`] (the KVM side);
//!   guest-virtual memory ([`vmem`]), [`backtrace`]s and [`coredump`]s;
//! * [`vmm`]: one guest owning its components, its boot path, run loop and
//!   hypercall dispatch, [`vmm::Vmm::capture`] / [`vmm::Vmm::assemble`];
//! * [`compat`], [`statefile`], [`snapshot`], [`migration`], [`template`],
//!   and the debugger ([`debug`]: GDB, core files);
//! * the control plane: [`api`], [`runner`], [`signals`];
//! * beside everything: [`seccomp`] (each thread's system-call list).
#![deny(missing_docs)]

pub mod access;
pub mod api;
pub mod backtrace;
pub mod bootinfo;
pub mod call;
pub mod clock;
pub mod compat;
pub mod config;
pub mod contract;
pub mod coredump;
pub mod cpu;
pub mod debug;
pub mod devices;
pub mod errors;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod heap;
pub mod hypercall;
pub mod identity;
pub mod kvm;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod migration;
pub mod outcome;
pub mod paging;
pub mod persist;
pub mod runner;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod statefile;
pub mod template;
pub mod trace;
pub mod vm;
pub mod vmem;
pub mod vmm;
