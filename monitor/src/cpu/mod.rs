//! The CPU side of a guest, all of it owned by the monitor: descriptor
//! tables and initial registers ([`tables`]), the CPUID the guest sees
//! ([`cpuid`]), the vCPU and its saved state ([`vcpu`]), and the ring-0
//! exception stubs with what the CPU pushes through them ([`exception`]).

pub mod cpuid;
pub mod exception;
pub mod tables;
pub mod vcpu;
