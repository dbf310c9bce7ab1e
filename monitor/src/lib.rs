//! The Duet monitor: a minimal KVM monitor for Duet unikernels.
//!
//! The guest runs in ring 3 and asks for everything through hypercalls
//! ([`duet_abi::hypercall`]); the monitor owns every privileged structure
//! (page tables, GDT, IDT, TSS) and emulates no hardware.
//!
//! Boot path: [`vm::Vm::create`]. Hypercall path: [`vm::Vm::run`] →
//! [`hypercall::dispatch`]. See `docs/architecture.md`.
#![deny(missing_docs)]

pub mod api;
pub mod backtrace;
pub mod bootinfo;
pub mod config;
pub mod control;
pub mod coredump;
pub mod cpu;
pub mod cpuid;
pub mod debug;
pub mod devices;
pub mod exception;
pub mod heap;
pub mod hypercall;
pub mod kvm;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod migration;
pub mod paging;
pub mod report;
pub mod runner;
pub mod signals;
pub mod snapshot;
pub mod status;
pub mod template;
pub mod trace;
pub mod vcpu;
pub mod vm;
pub mod vmem;
