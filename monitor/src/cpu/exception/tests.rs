//! The stub page, the IDT that points into it, decoding and resuming; the
//! last test drives a real vCPU through exceptions and back to ring 3.

use super::frame::{decode, read, resume, resume_state};
use super::*;
use crate::cpu::tables;
use crate::layout::{selector, IDT, IST_STACK_TOP, MIN_MEM, STACK_TOP, TSS};
use duet_abi::hypercall::{Hypercall, PORT_BASE, PORT_COUNT};
use duet_abi::Gpa;
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuExit;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const NX: u64 = 1 << 63;

/// Guest memory with the monitor's area built as `Vm::build_guest` does.
fn monitor_area() -> (GuestMem, PageTables) {
    let mem = GuestMem::new(MIN_MEM).unwrap();
    let mut pt = PageTables::new(&mem).unwrap();
    pt.map_4k(&mem, layout::GDT, IST_STACK_TOP, Access::Supervisor)
        .unwrap();
    write_stubs(&mem).unwrap();
    map_stubs(&mem, &mut pt).unwrap();
    tables::write_tables(&mem, &gates()).unwrap();
    (mem, pt)
}

#[test]
fn every_idt_gate_enters_its_stub_in_the_supervisor_only_stub_page() {
    let (mem, pt) = monitor_area();
    let mut sregs = kvm_sregs::default();
    tables::setup_sregs(&mut sregs);
    assert_eq!(sregs.idt.base, IDT);
    assert_eq!(usize::from(sregs.idt.limit) + 1, 16 * IDT_GATES);
    for v in 0..IDT_GATES as u8 {
        let lo: u64 = mem.read_plain(Gpa(IDT + 16 * u64::from(v))).unwrap();
        let hi: u64 = mem.read_plain(Gpa(IDT + 16 * u64::from(v) + 8)).unwrap();
        let handler = (lo & 0xffff) | (((lo >> 48) & 0xffff) << 16) | (hi << 32);
        let attr = (lo >> 40) & 0xff;
        assert_eq!(handler, stub_addr(v), "vector {v}");
        assert!(
            (layout::EXCEPTION_STUBS..layout::MONITOR_END).contains(&handler),
            "vector {v}"
        );
        assert_eq!((lo >> 16) & 0xffff, u64::from(selector::KERNEL_CODE));
        assert_eq!((lo >> 32) & 7, 1, "vector {v} is not on IST1");
        assert_eq!(
            attr & 0x9f,
            0x8e,
            "vector {v}: not a present interrupt gate"
        );
        let dpl = (attr >> 5) & 3;
        assert_eq!(dpl, if v == BREAKPOINT { 3 } else { 0 }, "vector {v}");
        let mut stub = [0u8; 3];
        mem.read_bytes(Gpa(handler), &mut stub).unwrap();
        assert_eq!(stub, [0xe6, 0xe0 + v, 0xf4], "vector {v}'s stub");
    }
    // The stub page: present, read-only, supervisor-only, executable.
    let leaf = pt.leaf(&mem, layout::EXCEPTION_STUBS).unwrap();
    assert_eq!(leaf & (P | RW | US | NX), P);
    // Every other monitor page: supervisor-only and not executable.
    for page in (layout::GDT..IST_STACK_TOP).step_by(PAGE_SIZE as usize) {
        let leaf = pt.leaf(&mem, page).unwrap();
        assert_eq!(leaf & (US | NX), NX, "page {page:#x}");
    }
}

#[test]
fn stub_ports_are_closed_to_ring_3() {
    let (mem, _) = monitor_area();
    let bitmap = TSS + 104;
    let closed = |port: u16| {
        let b: u8 = mem.read_plain(Gpa(bitmap + u64::from(port / 8))).unwrap();
        b & (1 << (port % 8)) != 0
    };
    for v in 0..IDT_GATES as u8 {
        assert!(closed(stub_port(v)), "vector {v}'s port is open");
        assert!(is_stub_port(stub_port(v)));
    }
    assert!(!closed(Hypercall::Exit.port()));
    // Ports past the bitmap lie past the TSS limit: the CPU denies them.
    let last_byte = tables::TSS_LIMIT - 104;
    assert!(u64::from(PORT_BASE + PORT_COUNT + 3) / 8 < last_byte);
    let trailing: u8 = mem.read_plain(Gpa(bitmap + last_byte)).unwrap();
    assert_eq!(trailing, 0xff, "the bitmap must end with an all-ones byte");
    assert!(!is_stub_port(STUB_PORT_BASE - 1) && !is_stub_port(STUB_PORT_BASE + 32));
    assert!(!(PORT_BASE..PORT_BASE + PORT_COUNT).any(is_stub_port));
}

/// Registers as the CPU leaves them at `vector`'s stub, with `frame` (the
/// words the CPU pushed) written to the IST stack.
fn at_stub(mem: &GuestMem, vector: u8, frame: &[u64]) -> (kvm_regs, kvm_sregs) {
    let at = Frame::addr(vector);
    for (i, w) in frame.iter().enumerate() {
        mem.write_monitor_plain(Gpa(at + 8 * i as u64), w).unwrap();
    }
    let mut sregs = kvm_sregs::default();
    sregs.cs.selector = selector::KERNEL_CODE;
    sregs.cr2 = 0xdead_0000;
    let regs = kvm_regs {
        rip: stub_addr(vector) + OUT_LEN,
        rsp: at,
        rbx: 0x5a5a,
        ..Default::default()
    };
    (regs, sregs)
}

#[test]
fn decode_reads_the_cpu_frame_and_keeps_the_general_registers() {
    let (mem, _) = monitor_area();
    let (regs, sregs) = at_stub(&mem, 14, &[0x6, 0x20_1234, 0x33, 0x246, 0x1f_ff00, 0x2b]);
    let e = decode(stub_port(14), &regs, &sregs, &mem).unwrap();
    assert_eq!(
        e.frame,
        Frame {
            vector: 14,
            error_code: Some(0x6),
            rip: 0x20_1234,
            cs: 0x33,
            rflags: 0x246,
            rsp: 0x1f_ff00,
            ss: 0x2b,
        }
    );
    assert_eq!(
        (e.regs.rip, e.regs.rsp, e.regs.rbx),
        (0x20_1234, 0x1f_ff00, 0x5a5a)
    );
    assert_eq!((e.cr2, e.frame.cpl()), (0xdead_0000, 3));
    // Before the `out` completes is fine too; no error code for #BP.
    let (mut regs, sregs) = at_stub(&mem, 3, &[0x20_0001, 0x33, 0x2, 0x1f_fff8, 0x2b]);
    regs.rip = stub_addr(3);
    let e = decode(stub_port(3), &regs, &sregs, &mem).unwrap();
    assert_eq!((e.frame.error_code, e.frame.rip), (None, 0x20_0001));
}

#[test]
fn decode_refuses_exits_that_are_not_the_stub() {
    let (mem, _) = monitor_area();
    let (regs, sregs) = at_stub(&mem, 6, &[0x20_0000, 0x33, 0x2, 0x1f_fff8, 0x2b]);
    let stray = |regs: &kvm_regs, sregs: &kvm_sregs| {
        matches!(
            decode(stub_port(6), regs, sregs, &mem),
            Err(ExceptionError::Stray { .. })
        )
    };
    // From ring 3.
    let mut user = sregs;
    user.cs.selector = selector::USER_CODE;
    user.cs.dpl = 3;
    assert!(stray(&regs, &user));
    // From ring 0 elsewhere, or at another vector's stub.
    let mut r = regs;
    r.rip = 0x20_0000;
    assert!(stray(&r, &sregs));
    r.rip = stub_addr(7);
    assert!(stray(&r, &sregs));
    // RSP not where the CPU pushes.
    let mut r = regs;
    r.rsp -= 8;
    assert!(matches!(
        decode(stub_port(6), &r, &sregs, &mem),
        Err(ExceptionError::Stack { .. })
    ));
    assert!(decode(stub_port(6), &regs, &sregs, &mem).is_ok());
}

#[test]
fn resume_state_returns_to_ring_3_with_user_flags_only() {
    let frame = Frame {
        vector: 3,
        error_code: None,
        rip: 0x20_0010,
        cs: 0x33,
        // IF, IOPL 3 and NT set: none may come back.
        rflags: 0x246 | 0x3000 | 0x4000 | 0x100,
        rsp: 0x1f_ff00,
        ss: 0x2b,
    };
    let mut regs = kvm_regs {
        rax: 7,
        ..Default::default()
    };
    let mut sregs = kvm_sregs::default();
    sregs.cs.selector = selector::KERNEL_CODE;
    resume_state(&frame, &mut regs, &mut sregs).unwrap();
    assert_eq!((regs.rip, regs.rsp, regs.rax), (0x20_0010, 0x1f_ff00, 7));
    assert_eq!(regs.rflags, 0x46 | 0x100);
    assert_eq!((sregs.cs.selector, sregs.cs.dpl, sregs.cs.l), (0x33, 3, 1));
    assert_eq!((sregs.ss.selector, sregs.ss.dpl), (0x2b, 3));

    for bad in [
        Frame { cs: 0x10, ..frame },
        Frame { ss: 0, ..frame },
        Frame {
            rip: 0x8000_0000_0000,
            ..frame
        },
    ] {
        let (mut r, mut s) = (kvm_regs::default(), kvm_sregs::default());
        assert!(resume_state(&bad, &mut r, &mut s).is_err(), "{bad:?}");
        assert_eq!(r.rip, 0, "a refused frame changed registers");
    }
}

/// A few instructions of ring-3 code, with the offsets tests need.
struct Code(Vec<u8>);

impl Code {
    fn at(&self) -> u64 {
        layout::STACK_TOP + self.0.len() as u64
    }
    fn emit(&mut self, bytes: &[u8]) -> u64 {
        let at = self.at();
        self.0.extend_from_slice(bytes);
        at
    }
    fn imm32(&mut self, op: &[u8], v: u32) -> u64 {
        let at = self.emit(op);
        self.0.extend_from_slice(&v.to_le_bytes());
        at
    }
}

#[test]
fn a_real_vcpu_reports_exceptions_through_the_stubs_and_resumes_in_ring_3() {
    let kvm = crate::kvm::open(std::path::Path::new("/dev/kvm"))
        .expect("this test runs a real vCPU: it needs /dev/kvm (and root or the kvm group)");
    let (mem, mut pt) = monitor_area();
    let vm = crate::vm::Vm::with_kvm(std::sync::Arc::new(kvm), mem).unwrap();
    let mem = vm.mem();

    // Code at the image base (right above the stack top).
    let mut c = Code(Vec::new());
    let entry = c.imm32(&[0xbb], 0x5a5a); // mov ebx, 0x5a5a
    let after_int3 = c.emit(&[0xcc]) + 1; // int3
    let ud2 = c.emit(&[0x0f, 0x0b]); // ud2
    let jump = c.imm32(&[0xb8], layout::EXCEPTION_STUBS as u32); // mov eax, stubs
    c.emit(&[0xff, 0xe0]); // jmp rax
    let idt_write = c.emit(&[0xc7, 0x04, 0x25]); // mov dword [IDT], 1
    c.0.extend_from_slice(&(IDT as u32).to_le_bytes());
    c.0.extend_from_slice(&1u32.to_le_bytes());
    let stray = c.emit(&[0xe6, stub_port(3) as u8]); // out 0xe3, al
    let exit = c.imm32(&[0xba], u32::from(Hypercall::Exit.port())); // mov edx, port
    c.imm32(&[0xb8], 7); // mov eax, 7
    c.emit(&[0xef]); // out dx, eax
    mem.write_bytes(Gpa(STACK_TOP), &c.0).unwrap();
    pt.map_4k(mem, STACK_TOP, STACK_TOP + PAGE_SIZE, Access::UserExec)
        .unwrap();
    pt.map_4k(mem, STACK_TOP - PAGE_SIZE, STACK_TOP, Access::UserWrite)
        .unwrap();

    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    tables::setup_sregs(&mut sregs);
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&tables::initial_regs(entry, 0)).unwrap();

    // Runs to the next stub; returns the exception.
    let next = |vcpu: &mut kvm_ioctls::VcpuFd| -> Exception {
        let port = match vcpu.run().unwrap() {
            VcpuExit::IoOut(port, _) => port,
            other => panic!("expected a stub's exit, got {other:?}"),
        };
        assert!(is_stub_port(port), "exit on port {port:#x}");
        read(vcpu, mem, port).unwrap()
    };

    let e = next(&mut vcpu);
    assert_eq!(
        (e.frame.vector, e.frame.rip, e.frame.error_code),
        (3, after_int3, None)
    );
    assert_eq!(
        (e.frame.cs, e.frame.ss, e.frame.rsp),
        (0x33, 0x2b, STACK_TOP - 8)
    );
    assert_eq!(e.regs.rbx, 0x5a5a);
    resume(&vcpu, &e.frame).unwrap();

    // Resumed right after the int3, in ring 3, registers intact.
    let e = next(&mut vcpu);
    assert_eq!((e.frame.vector, e.frame.rip, e.frame.cpl()), (6, ud2, 3));
    assert_eq!(e.regs.rbx, 0x5a5a);
    resume(
        &vcpu,
        &Frame {
            rip: jump,
            ..e.frame
        },
    )
    .unwrap();

    // Jumping into the stub page: an instruction fetch from a
    // supervisor page (present | user | fetch).
    let e = next(&mut vcpu);
    assert_eq!(e.frame.vector, 14);
    assert_eq!(
        (e.frame.error_code, e.cr2),
        (Some(0x15), layout::EXCEPTION_STUBS)
    );
    resume(
        &vcpu,
        &Frame {
            rip: idt_write,
            ..e.frame
        },
    )
    .unwrap();

    // Writing the IDT (present | write | user).
    let e = next(&mut vcpu);
    assert_eq!((e.frame.vector, e.frame.rip), (14, idt_write));
    assert_eq!((e.frame.error_code, e.cr2), (Some(0x7), IDT));
    resume(
        &vcpu,
        &Frame {
            rip: stray,
            ..e.frame
        },
    )
    .unwrap();

    // A stub's port from ring 3: closed by the I/O bitmap, so #GP(0).
    let e = next(&mut vcpu);
    assert_eq!(
        (e.frame.vector, e.frame.rip, e.frame.error_code),
        (13, stray, Some(0))
    );
    resume(
        &vcpu,
        &Frame {
            rip: exit,
            ..e.frame
        },
    )
    .unwrap();

    match vcpu.run().unwrap() {
        VcpuExit::IoOut(port, data) => {
            assert_eq!((port, data), (Hypercall::Exit.port(), &[7u8, 0, 0, 0][..]))
        }
        other => panic!("expected the exit hypercall, got {other:?}"),
    }
    let (regs, sregs) = (vcpu.get_regs().unwrap(), vcpu.get_sregs().unwrap());
    assert_eq!((sregs.cs.selector, regs.rbx), (selector::USER_CODE, 0x5a5a));
    // The guest could not change its own IDT.
    let lo: u64 = mem.read_plain(Gpa(IDT)).unwrap();
    assert_eq!(lo & 0xffff, stub_addr(0) & 0xffff);
}
