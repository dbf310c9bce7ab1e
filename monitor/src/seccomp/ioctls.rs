//! The `ioctl` requests each thread may make, by number (`_IOC` encoding,
//! as `<linux/kvm.h>` and `<linux/if_tun.h>` define them), with why.
//!
//! The kernel reads an ioctl's request as a 32-bit `unsigned int`, so the
//! filter compares the argument's low 32 bits (`Dword`): exactly what the
//! kernel will act on.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_dirty_log, kvm_fpu, kvm_guest_debug, kvm_ioeventfd,
    kvm_mp_state, kvm_msr_list, kvm_msrs, kvm_regs, kvm_sregs, kvm_userspace_memory_region,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

/// One allowed request: its number, its name (for the docs and the
/// violation report) and why the thread makes it.
#[derive(Clone, Copy, Debug)]
pub struct Ioctl {
    /// The request number.
    pub nr: u32,
    /// Its name in the kernel's headers.
    pub name: &'static str,
    /// Why the thread makes it.
    pub why: &'static str,
}

const KVMIO: u32 = 0xAE;
const NONE: u32 = 0;
const WRITE: u32 = 1;
const READ: u32 = 2;

const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}
const fn io(nr: u32) -> u32 {
    ioc(NONE, KVMIO, nr, 0)
}
const fn ior<T>(nr: u32) -> u32 {
    ioc(READ, KVMIO, nr, std::mem::size_of::<T>())
}
const fn iow<T>(nr: u32) -> u32 {
    ioc(WRITE, KVMIO, nr, std::mem::size_of::<T>())
}
const fn iowr<T>(nr: u32) -> u32 {
    ioc(READ | WRITE, KVMIO, nr, std::mem::size_of::<T>())
}

macro_rules! ioctl {
    ($name:ident = $nr:expr, $why:expr) => {
        /// See the `why` field.
        pub const $name: Ioctl = Ioctl {
            nr: $nr,
            name: stringify!($name),
            why: $why,
        };
    };
}

// System ioctls (on /dev/kvm).
ioctl!(KVM_GET_API_VERSION = io(0x00), "checked when KVM is opened");
ioctl!(KVM_CREATE_VM = io(0x01), "the VM");
ioctl!(
    KVM_GET_MSR_INDEX_LIST = iowr::<kvm_msr_list>(0x02),
    "the MSRs a snapshot saves (asked at the first capture)"
);
ioctl!(
    KVM_CHECK_EXTENSION = io(0x03),
    "capabilities (XSAVE size, TSC control)"
);
ioctl!(
    KVM_GET_VCPU_MMAP_SIZE = io(0x04),
    "the vCPU's kvm_run page; the VM fd duplicated for a migration"
);
ioctl!(
    KVM_GET_SUPPORTED_CPUID = iowr::<kvm_cpuid2>(0x05),
    "the CPUID the guest gets, on a cache miss"
);
// VM ioctls.
ioctl!(KVM_CREATE_VCPU = io(0x41), "the vCPU");
ioctl!(
    KVM_GET_DIRTY_LOG = iow::<kvm_dirty_log>(0x42),
    "migration: pages the guest wrote"
);
ioctl!(
    KVM_SET_USER_MEMORY_REGION = iow::<kvm_userspace_memory_region>(0x46),
    "guest memory as slot 0; dirty logging on and off for a migration"
);
ioctl!(
    KVM_IOEVENTFD = iow::<kvm_ioeventfd>(0x79),
    "virtio doorbells that wake an I/O thread without an exit"
);
ioctl!(
    KVM_SET_CLOCK = iow::<kvm_clock_data>(0x7b),
    "restore: the KVM clock"
);
ioctl!(
    KVM_GET_CLOCK = ior::<kvm_clock_data>(0x7c),
    "capture: the KVM clock"
);
// vCPU ioctls.
ioctl!(KVM_RUN = io(0x80), "runs the guest (every exit)");
ioctl!(
    KVM_GET_REGS = ior::<kvm_regs>(0x81),
    "hypercall faults, reports, GDB, capture"
);
ioctl!(
    KVM_SET_REGS = iow::<kvm_regs>(0x82),
    "boot, exception return, GDB"
);
ioctl!(
    KVM_GET_SREGS = ior::<kvm_sregs>(0x83),
    "CR2 and CPL at an exception, capture"
);
ioctl!(
    KVM_SET_SREGS = iow::<kvm_sregs>(0x84),
    "boot, exception return, restore"
);
ioctl!(
    KVM_GET_MSRS = iowr::<kvm_msrs>(0x88),
    "the guest TSC (clock anchor), capture"
);
ioctl!(KVM_SET_MSRS = iow::<kvm_msrs>(0x89), "restore");
ioctl!(
    KVM_GET_FPU = ior::<kvm_fpu>(0x8c),
    "GDB's and core files' FPU registers"
);
ioctl!(
    KVM_SET_FPU = iow::<kvm_fpu>(0x8d),
    "GDB writes FPU registers"
);
ioctl!(
    KVM_SET_CPUID2 = iow::<kvm_cpuid2>(0x90),
    "the guest's CPUID"
);
ioctl!(
    KVM_GET_CPUID2 = iowr::<kvm_cpuid2>(0x91),
    "capture: the CPUID the guest saw"
);
ioctl!(KVM_GET_MP_STATE = ior::<kvm_mp_state>(0x98), "capture");
ioctl!(KVM_SET_MP_STATE = iow::<kvm_mp_state>(0x99), "restore");
ioctl!(
    KVM_SET_GUEST_DEBUG = iow::<kvm_guest_debug>(0x9b),
    "GDB single steps with DUET_GDB_STEP=kvm"
);
ioctl!(
    KVM_GET_VCPU_EVENTS = ior::<kvm_vcpu_events>(0x9f),
    "capture"
);
ioctl!(
    KVM_SET_VCPU_EVENTS = iow::<kvm_vcpu_events>(0xa0),
    "restore"
);
ioctl!(
    KVM_SET_TSC_KHZ = io(0xa2),
    "restore: the saved guest's TSC rate"
);
ioctl!(
    KVM_GET_TSC_KHZ = io(0xa3),
    "the guest's TSC rate (boot info, clock page, capture)"
);
ioctl!(KVM_GET_XSAVE = ior::<kvm_xsave>(0xa4), "capture");
ioctl!(KVM_SET_XSAVE = iow::<kvm_xsave>(0xa5), "restore");
ioctl!(KVM_GET_XCRS = ior::<kvm_xcrs>(0xa6), "capture");
ioctl!(KVM_SET_XCRS = iow::<kvm_xcrs>(0xa7), "restore");
ioctl!(
    KVM_GET_XSAVE2 = ior::<kvm_xsave>(0xcf),
    "capture, where KVM has it"
);

/// `TUNSETIFF`: attach to a TAP (`_IOW('T', 202, int)`).
pub const TUNSETIFF: Ioctl = Ioctl {
    nr: ioc(WRITE, b'T' as u32, 202, std::mem::size_of::<libc::c_int>()),
    name: "TUNSETIFF",
    why: "--net: attach to the TAP",
};
/// `SIOCGIFMTU`: the TAP's MTU.
pub const SIOCGIFMTU: Ioctl = Ioctl {
    nr: libc::SIOCGIFMTU as u32,
    name: "SIOCGIFMTU",
    why: "--net: the TAP's MTU",
};
/// `FIONBIO`: a socket made (non-)blocking.
pub const FIONBIO: Ioctl = Ioctl {
    nr: libc::FIONBIO as u32,
    name: "FIONBIO",
    why: "sockets made non-blocking",
};
/// `TCGETS`: whether stderr is a terminal (log colours).
pub const TCGETS: Ioctl = Ioctl {
    nr: libc::TCGETS as u32,
    name: "TCGETS",
    why: "isatty(stderr) for log colours",
};

/// What the vCPU thread asks of KVM once the guest runs: the run loop,
/// state for reports, GDB and captures (snapshots, templates, the
/// migration's stop), and dirty logging switched for a migration.
pub const VCPU: &[Ioctl] = &[
    KVM_RUN,
    KVM_GET_REGS,
    KVM_SET_REGS,
    KVM_GET_SREGS,
    KVM_SET_SREGS,
    KVM_GET_FPU,
    KVM_SET_FPU,
    KVM_GET_MSRS,
    KVM_GET_MSR_INDEX_LIST,
    KVM_GET_CPUID2,
    KVM_GET_XSAVE,
    KVM_GET_XSAVE2,
    KVM_GET_XCRS,
    KVM_GET_VCPU_EVENTS,
    KVM_GET_MP_STATE,
    KVM_GET_CLOCK,
    KVM_GET_TSC_KHZ,
    KVM_CHECK_EXTENSION,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_SET_GUEST_DEBUG,
    KVM_SET_USER_MEMORY_REGION,
    KVM_GET_DIRTY_LOG,
];

/// Building a VM from a migration stream (the destination's thread, which
/// then narrows itself to [`VCPU`]).
pub const INCOMING: &[Ioctl] = &[
    KVM_GET_API_VERSION,
    KVM_CREATE_VM,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_GET_SUPPORTED_CPUID,
    KVM_CREATE_VCPU,
    KVM_SET_CPUID2,
    KVM_IOEVENTFD,
    KVM_SET_CLOCK,
    KVM_SET_TSC_KHZ,
    KVM_SET_MSRS,
    KVM_SET_XSAVE,
    KVM_SET_XCRS,
    KVM_SET_VCPU_EVENTS,
    KVM_SET_MP_STATE,
    TUNSETIFF,
    SIOCGIFMTU,
    FIONBIO,
];

/// A migration's sender: the dirty log through its duplicate of the VM fd.
pub const MIGRATION: &[Ioctl] = &[KVM_GET_DIRTY_LOG, FIONBIO];

/// The control threads: what the migration threads they start need, and
/// sockets made non-blocking.
pub const CONTROL: &[Ioctl] = MIGRATION;

/// The GDB thread: its sockets.
pub const GDB: &[Ioctl] = &[FIONBIO];

/// Every request named here, for the violation report.
pub const NAMED: &[&[Ioctl]] = &[VCPU, INCOMING, &[TCGETS]];
