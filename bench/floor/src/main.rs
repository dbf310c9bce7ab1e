//! `kvm-floor`: the benchmark floor, KVM with nothing of Duet's.
//!
//! A deliberately independent, minimal raw-KVM program (it shares no code
//! with the Duet monitor) doing only what any VM needs to reach its first
//! guest instruction and stop, each step because nothing runs without it:
//!
//! 1. open `/dev/kvm` (the KVM API);
//! 2. `KVM_CREATE_VM` (a VM);
//! 3. one small anonymous mapping as memory slot 0 (somewhere to put code,
//!    page tables and descriptor tables);
//! 4. `KVM_CREATE_VCPU` with the least CPUID long mode needs (no
//!    `KVM_GET_SUPPORTED_CPUID`);
//! 5. page tables, a GDT and a TSS with an I/O bitmap written into memory,
//!    special and general registers set: 64-bit ring 3 from the first
//!    instruction, the way Duet starts its guests (user CS 0x33 / SS 0x2b,
//!    IOPL 0, one port open);
//! 6. `KVM_RUN` to the guest's first `out`, then exit.
//!
//! The guest does nothing but `out` to that port in a loop.
//!
//! * `kvm-floor halt`: run until the first `out` and exit 0. Timed as a whole
//!   process, this is the floor for a Duet boot.
//! * `kvm-floor exits N`: time `N` `out` exits (after a warm-up) and print
//!   `BENCH floor_exit_ns <ns per exit> ns`: the floor for a hypercall.

use kvm_bindings::{kvm_cpuid_entry2, kvm_segment, kvm_userspace_memory_region, CpuId};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use std::process::ExitCode;
use std::time::Instant;

/// Guest memory: one 2 MiB page is plenty.
const MEM_SIZE: usize = 2 << 20;
const GDT: usize = 0x1000;
const TSS: usize = 0x2000;
const TSS_SIZE: usize = 104;
/// One bit per port, plus the trailing all-ones byte the CPU requires.
const IOMAP_SIZE: usize = 65536 / 8 + 1;
const PML4: usize = 0x5000;
const PDPT: usize = 0x6000;
const PD: usize = 0x7000;
const CODE: usize = 0x8000;
/// The port the guest writes; any port works, this one is Duet's business
/// only by coincidence of being unused.
const PORT: u16 = 0x600;
const USER_CS: u16 = 0x33;
const USER_SS: u16 = 0x2b;
const TR_SEL: u16 = 0x40;

/// `mov dx, PORT; 1: out dx, eax; jmp 1b`.
fn guest_code() -> [u8; 7] {
    let p = PORT.to_le_bytes();
    [0x66, 0xba, p[0], p[1], 0xef, 0xeb, 0xfd]
}

/// An anonymous mapping that is unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping, String> {
        // SAFETY: an anonymous private mapping with no address hint touches
        // no existing memory; the result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and lives
        // as long as `self`; `&mut self` makes this the only host reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn put_u64(mem: &mut [u8], at: usize, v: u64) {
    mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Page tables (one user-accessible 2 MiB page at 0), GDT, TSS + I/O bitmap
/// opening the four ports a 32-bit `out` to `PORT` covers, and the code.
fn build_guest(mem: &mut [u8]) {
    const P_RW_US: u64 = 0x7;
    const PS: u64 = 0x80;
    put_u64(mem, PML4, PDPT as u64 | P_RW_US);
    put_u64(mem, PDPT, PD as u64 | P_RW_US);
    put_u64(mem, PD, P_RW_US | PS);

    // Flat descriptors: user code64 (0x30) and user data (0x28), TSS (0x40).
    let desc = |access: u64, flags: u64| 0xffff | (access << 40) | (0xf << 48) | (flags << 52);
    put_u64(mem, GDT + 0x28, desc(0xf3, 0b1100));
    put_u64(mem, GDT + 0x30, desc(0xfb, 0b1010));
    let limit = (TSS_SIZE + IOMAP_SIZE - 1) as u64;
    let base = TSS as u64;
    put_u64(
        mem,
        GDT + TR_SEL as usize,
        (limit & 0xffff) | ((base & 0xff_ffff) << 16) | (0x8b << 40) | ((limit >> 16) << 48),
    );

    mem[TSS + 102..TSS + 104].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    let map = &mut mem[TSS + TSS_SIZE..TSS + TSS_SIZE + IOMAP_SIZE];
    map.fill(0xff);
    for port in PORT..PORT + 4 {
        map[usize::from(port / 8)] &= !(1 << (port % 8));
    }
    let code = guest_code();
    mem[CODE..CODE + code.len()].copy_from_slice(&code);
}

fn seg(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// The least CPUID a vCPU needs to enter long mode: KVM refuses EFER.LME
/// unless leaf 0x8000_0001 says "long mode", which needs leaf 0x8000_0000 to
/// list it. A hand-built table, not `KVM_GET_SUPPORTED_CPUID`: asking KVM
/// costs ~0.3 ms here, which no VM needs to start (Duet caches KVM's answer).
fn minimal_cpuid() -> Result<CpuId, String> {
    let leaf = |function: u32, eax: u32, edx: u32| kvm_cpuid_entry2 {
        function,
        eax,
        edx,
        ..Default::default()
    };
    const LM: u32 = 1 << 29;
    CpuId::from_entries(&[leaf(0x8000_0000, 0x8000_0001, 0), leaf(0x8000_0001, 0, LM)])
        .map_err(|e| format!("CPUID table: {e:?}"))
}

/// Long mode, paging, CPL 3, IOPL 0.
fn setup_vcpu(vcpu: &VcpuFd) -> Result<(), String> {
    vcpu.set_cpuid2(&minimal_cpuid()?)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
    let mut s = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    s.cs = seg(USER_CS, true);
    let data = seg(USER_SS, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.tr = kvm_segment {
        base: TSS as u64,
        limit: (TSS_SIZE + IOMAP_SIZE - 1) as u32,
        selector: TR_SEL,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    s.gdt.base = GDT as u64;
    s.gdt.limit = 0x4f;
    s.cr0 = 0x8001_0033; // PG, WP, NE, ET, MP, PE
    s.cr3 = PML4 as u64;
    s.cr4 = 0x20; // PAE
    s.efer = 0x500; // LMA, LME
    vcpu.set_sregs(&s)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE as u64,
        rsp: MEM_SIZE as u64,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))
}

/// Runs the vCPU to its next `out` to `PORT`.
fn next_exit(vcpu: &mut VcpuFd) -> Result<(), String> {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT, _)) => return Ok(()),
            Ok(other) => return Err(format!("unexpected exit: {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
}

fn run(exits: Option<u64>) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let mut mem = Mapping::new(MEM_SIZE)?;
    build_guest(mem.bytes());
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.ptr as u64,
    };
    // SAFETY: `mem` is our own mapping of MEM_SIZE bytes; the explicit drops
    // at the end unmap it only after the vCPU and VM fds are closed.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    setup_vcpu(&vcpu)?;
    next_exit(&mut vcpu)?;
    if let Some(n) = exits {
        for _ in 0..(n / 10).max(10) {
            next_exit(&mut vcpu)?;
        }
        let t = Instant::now();
        for _ in 0..n {
            next_exit(&mut vcpu)?;
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!("BENCH floor_exit_ns {ns:.1} ns");
    }
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exits = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["halt"] => None,
        ["exits", n] => match n.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("kvm-floor: bad exit count {n:?}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: kvm-floor halt | kvm-floor exits N");
            return ExitCode::from(2);
        }
    };
    match run(exits) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvm-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
