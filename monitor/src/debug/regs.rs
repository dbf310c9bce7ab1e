//! GDB's x86_64 register file from KVM's register structs, and back.
//!
//! GDB sees the interrupted ring-3 context (the monitor always puts the
//! vCPU back there before it reports a stop). It may change the general
//! registers, RIP, the flags ring 3 could change itself, and the x87/SSE
//! state; the segment selectors and the privileged flags (IF, IOPL, ...)
//! belong to the monitor and a write that changes them is refused.

use crate::cpu::tables::USER_RFLAGS;
use gdbstub_arch::x86::reg::{X86SegmentRegs, X86_64CoreRegs, X87FpuInternalRegs};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

/// GDB's register file from KVM's (`fpu`: zeros when KVM gave none).
pub fn to_gdb(r: &kvm_regs, s: &kvm_sregs, fpu: Option<&kvm_fpu>) -> X86_64CoreRegs {
    let f = fpu.copied().unwrap_or_default();
    let mut st = [[0u8; 10]; 8];
    for (d, s) in st.iter_mut().zip(&f.fpr) {
        d.copy_from_slice(&s[..10]);
    }
    X86_64CoreRegs {
        regs: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        eflags: r.rflags as u32,
        rip: r.rip,
        segments: X86SegmentRegs {
            cs: u32::from(s.cs.selector),
            ss: u32::from(s.ss.selector),
            ds: u32::from(s.ds.selector),
            es: u32::from(s.es.selector),
            fs: u32::from(s.fs.selector),
            gs: u32::from(s.gs.selector),
        },
        st,
        fpu: X87FpuInternalRegs {
            fctrl: u32::from(f.fcw),
            fstat: u32::from(f.fsw),
            ftag: full_tag(f.ftwx),
            fiseg: 0,
            fioff: f.last_ip as u32,
            foseg: 0,
            fooff: f.last_dp as u32,
            fop: u32::from(f.last_opcode),
        },
        xmm: std::array::from_fn(|i| u128::from_le_bytes(f.xmm[i])),
        mxcsr: f.mxcsr,
    }
}

/// FXSAVE keeps one "in use" bit per x87 register; GDB shows the full
/// two-bit tag word (00 valid, 11 empty).
fn full_tag(abridged: u8) -> u32 {
    (0..8).fold(0, |t, i| {
        t | if abridged & (1 << i) != 0 {
            0
        } else {
            3 << (2 * i)
        }
    })
}

fn abridged_tag(full: u32) -> u8 {
    (0..8).fold(0, |t, i| {
        t | if (full >> (2 * i)) & 3 != 3 {
            1 << i
        } else {
            0
        }
    })
}

fn canonical(v: u64) -> bool {
    let top = v >> 47;
    top == 0 || top == (1 << 17) - 1
}

/// Applies GDB's register file `g` to `r` and `fpu`, refusing what ring 3
/// could not do itself. `s` is the current special registers.
pub fn from_gdb(
    g: &X86_64CoreRegs,
    r: &mut kvm_regs,
    s: &kvm_sregs,
    fpu: &mut kvm_fpu,
) -> Result<(), String> {
    let cur = to_gdb(r, s, None);
    if g.segments != cur.segments {
        return Err(format!(
            "the segment registers belong to the monitor (ring 3: cs {:#x} ss {:#x}); they cannot change",
            cur.segments.cs, cur.segments.ss
        ));
    }
    let flags = u64::from(g.eflags);
    if (flags ^ r.rflags) & !USER_RFLAGS != 0 {
        return Err(format!(
            "eflags {flags:#x}: only the flags ring 3 may change itself (arithmetic, TF, DF, RF, AC, ID) can be set"
        ));
    }
    if !canonical(g.rip) {
        return Err(format!("rip {:#x} is not a canonical address", g.rip));
    }
    let [rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15] = g.regs;
    *r = kvm_regs {
        rax,
        rbx,
        rcx,
        rdx,
        rsi,
        rdi,
        rbp,
        rsp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rip: g.rip,
        rflags: flags,
    };
    for (d, s) in fpu.fpr.iter_mut().zip(&g.st) {
        d[..10].copy_from_slice(s);
    }
    fpu.fcw = g.fpu.fctrl as u16;
    fpu.fsw = g.fpu.fstat as u16;
    fpu.ftwx = abridged_tag(g.fpu.ftag);
    fpu.last_opcode = g.fpu.fop as u16;
    for (d, s) in fpu.xmm.iter_mut().zip(&g.xmm) {
        *d = s.to_le_bytes();
    }
    fpu.mxcsr = g.mxcsr;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring3() -> (kvm_regs, kvm_sregs) {
        let mut s = kvm_sregs::default();
        crate::cpu::tables::setup_sregs(&mut s);
        let r = kvm_regs {
            rax: 1,
            rsp: 0x1f_fff0,
            rip: 0x20_1000,
            rflags: 0x2,
            ..Default::default()
        };
        (r, s)
    }

    #[test]
    fn round_trips_and_refuses_privileged_changes() {
        let (mut r, s) = ring3();
        let mut fpu = kvm_fpu {
            fcw: 0x37f,
            ftwx: 0b1,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fpu.xmm[3][0] = 9;
        let mut g = to_gdb(&r, &s, Some(&fpu));
        assert_eq!((g.segments.cs, g.segments.ss), (0x33, 0x2b));
        assert_eq!(g.fpu.ftag, 0xfffc);
        assert_eq!(g.xmm[3], 9);
        g.regs[0] = 42;
        g.rip = 0x20_2000;
        g.eflags |= 0x1 | 0x100; // CF, TF
        g.xmm[1] = 7;
        let mut f2 = fpu;
        from_gdb(&g, &mut r, &s, &mut f2).unwrap();
        assert_eq!((r.rax, r.rip, r.rflags & 0x101), (42, 0x20_2000, 0x101));
        assert_eq!((f2.xmm[1][0], f2.ftwx, f2.fcw), (7, 0b1, 0x37f));

        for bad in [
            {
                let mut b = g.clone();
                b.segments.cs = 0x10;
                b
            },
            {
                let mut b = g.clone();
                b.eflags |= 0x3000; // IOPL 3
                b
            },
            {
                let mut b = g.clone();
                b.eflags |= 0x200; // IF
                b
            },
            {
                let mut b = g.clone();
                b.rip = 0x8000_0000_0000;
                b
            },
        ] {
            let before = r;
            assert!(from_gdb(&bad, &mut r, &s, &mut f2).is_err());
            assert_eq!(r.rip, before.rip, "a refused write changes nothing");
        }
    }
}
