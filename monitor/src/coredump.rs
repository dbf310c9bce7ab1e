//! ELF core files of a guest, for `gdb IMAGE CORE`.
//!
//! The layout is a Linux x86_64 process core, which GDB reads without help:
//! one `PT_NOTE` segment with `NT_PRSTATUS` (the vCPU's general registers
//! as `user_regs_struct`, and the signal) and `NT_FPREGSET` (the FXSAVE
//! image from `KVM_GET_FPU`); then one
//! `PT_LOAD` per run of ring-3 mapped guest memory, at its guest-virtual
//! address with the page's rights. Monitor-owned (supervisor) pages are
//! left out. Pages that read as zero are left as holes in a sparse file.
//! There is no `NT_PRPSINFO`: without a command line in the core, GDB takes
//! any image it is given as the right one.
//!
//! The file is written next to its final path and renamed into place, so a
//! reader never sees half a core.

use crate::memory::GuestMem;
use crate::vmem;
use duet_abi::PAGE_SIZE;
use kvm_bindings::{kvm_fpu, kvm_regs};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const NT_PRSTATUS: u32 = 1;
const NT_FPREGSET: u32 = 2;
/// `sizeof(struct elf_prstatus)` on x86_64.
const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_reg` in `elf_prstatus`.
const PR_REG: usize = 112;
/// `sizeof(struct user_fpregs_struct)` (the FXSAVE area).
const FPREGSET_SIZE: usize = 512;

/// The registers and selectors of the context being dumped.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreRegs {
    /// General registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Code segment selector.
    pub cs: u16,
    /// Stack segment selector.
    pub ss: u16,
    /// Data segment selector (DS, ES, FS and GS alike in a Duet guest).
    pub ds: u16,
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
    /// x87/SSE state, when KVM gave it.
    pub fpu: Option<kvm_fpu>,
    /// The POSIX signal number GDB shows the "process" died of (0: none).
    pub signal: u32,
}

/// What a dump did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The file's length.
    pub bytes: u64,
    /// Bytes of guest memory in `PT_LOAD` segments.
    pub memory_bytes: u64,
}

/// The POSIX signal a Unix process would have died of for exception `vector`.
pub fn signal_for_vector(vector: u8) -> u32 {
    match vector {
        0 | 16 | 19 => 8, // SIGFPE
        1 | 3 => 5,       // SIGTRAP
        6 => 4,           // SIGILL
        17 => 7,          // SIGBUS
        _ => 11,          // SIGSEGV
    }
}

/// The signal of a guest that panicked.
pub const SIGABRT: u32 = 6;

fn note(out: &mut Vec<u8>, kind: u32, desc: &[u8]) {
    let name = b"CORE\0";
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// `elf_prstatus`: signal, then `user_regs_struct` in its kernel order.
fn prstatus(r: &CoreRegs) -> Vec<u8> {
    let mut d = vec![0u8; PRSTATUS_SIZE];
    put(&mut d, 0, &r.signal.to_le_bytes()); // pr_info.si_signo
    put(&mut d, 12, &(r.signal as u16).to_le_bytes()); // pr_cursig
    put(&mut d, 32, &1u32.to_le_bytes()); // pr_pid: the one "thread"
    let g = &r.regs;
    let (cs, ss, ds) = (u64::from(r.cs), u64::from(r.ss), u64::from(r.ds));
    let words = [
        g.r15,
        g.r14,
        g.r13,
        g.r12,
        g.rbp,
        g.rbx,
        g.r11,
        g.r10,
        g.r9,
        g.r8,
        g.rax,
        g.rcx,
        g.rdx,
        g.rsi,
        g.rdi,
        u64::MAX, // orig_rax: no system call
        g.rip,
        cs,
        g.rflags,
        g.rsp,
        ss,
        r.fs_base,
        r.gs_base,
        ds,
        ds,
        ds,
        ds,
    ];
    for (i, w) in words.iter().enumerate() {
        put(&mut d, PR_REG + 8 * i, &w.to_le_bytes());
    }
    put(
        &mut d,
        PR_REG + 8 * words.len(),
        &u32::from(r.fpu.is_some()).to_le_bytes(),
    );
    d
}

/// The FXSAVE layout of `fpu`.
fn fpregset(f: &kvm_fpu) -> Vec<u8> {
    let mut d = vec![0u8; FPREGSET_SIZE];
    put(&mut d, 0, &f.fcw.to_le_bytes());
    put(&mut d, 2, &f.fsw.to_le_bytes());
    d[4] = f.ftwx;
    put(&mut d, 6, &f.last_opcode.to_le_bytes());
    put(&mut d, 8, &f.last_ip.to_le_bytes());
    put(&mut d, 16, &f.last_dp.to_le_bytes());
    put(&mut d, 24, &f.mxcsr.to_le_bytes());
    put(&mut d, 28, &0xffffu32.to_le_bytes()); // mxcsr_mask
    for (i, st) in f.fpr.iter().enumerate() {
        put(&mut d, 32 + 16 * i, st);
    }
    for (i, x) in f.xmm.iter().enumerate() {
        put(&mut d, 160 + 16 * i, x);
    }
    d
}

fn ehdr(phnum: u16) -> Vec<u8> {
    let mut h = vec![0u8; EHDR_SIZE as usize];
    put(&mut h, 0, b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = 1; // little-endian
    h[6] = 1; // EV_CURRENT
    put(&mut h, 16, &4u16.to_le_bytes()); // ET_CORE
    put(&mut h, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut h, 20, &1u32.to_le_bytes());
    put(&mut h, 32, &EHDR_SIZE.to_le_bytes()); // e_phoff
    put(&mut h, 52, &(EHDR_SIZE as u16).to_le_bytes());
    put(&mut h, 54, &(PHDR_SIZE as u16).to_le_bytes());
    put(&mut h, 56, &phnum.to_le_bytes());
    put(&mut h, 58, &64u16.to_le_bytes()); // e_shentsize (no sections)
    h
}

#[allow(clippy::too_many_arguments)]
fn phdr(
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
) -> Vec<u8> {
    let mut p = vec![0u8; PHDR_SIZE as usize];
    put(&mut p, 0, &kind.to_le_bytes());
    put(&mut p, 4, &flags.to_le_bytes());
    put(&mut p, 8, &offset.to_le_bytes());
    put(&mut p, 16, &vaddr.to_le_bytes());
    put(&mut p, 24, &vaddr.to_le_bytes()); // p_paddr: identity-mapped
    put(&mut p, 32, &filesz.to_le_bytes());
    put(&mut p, 40, &memsz.to_le_bytes());
    put(&mut p, 48, &align.to_le_bytes());
    p
}

/// The temporary file a dump to `path` is written to first.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes a core of the guest in `mem` with registers `regs` to `path`
/// (atomically: a temporary file renamed into place). `patch` is called
/// with each page's address and bytes before they are written, so a
/// debugger can put back the instructions its breakpoints replaced.
pub fn write(
    path: &Path,
    mem: &GuestMem,
    regs: &CoreRegs,
    patch: &dyn Fn(u64, &mut [u8]),
) -> std::io::Result<Written> {
    let runs: Vec<vmem::Page> = vmem::mapped_runs(mem)
        .into_iter()
        .filter(|p| p.user)
        .collect();
    let mut notes = Vec::new();
    note(&mut notes, NT_PRSTATUS, &prstatus(regs));
    if let Some(f) = &regs.fpu {
        note(&mut notes, NT_FPREGSET, &fpregset(f));
    }
    let phnum = u16::try_from(runs.len() + 1).map_err(|_| {
        std::io::Error::other("guest memory is mapped in too many pieces for one core file")
    })?;
    let notes_at = EHDR_SIZE + PHDR_SIZE * u64::from(phnum);
    let mut head = ehdr(phnum);
    head.extend(phdr(PT_NOTE, 0, notes_at, 0, notes.len() as u64, 0, 4));
    let mut at = (notes_at + notes.len() as u64).next_multiple_of(PAGE_SIZE);
    let mut memory_bytes = 0;
    for r in &runs {
        let flags = PF_R | if r.write { PF_W } else { 0 } | if r.exec { PF_X } else { 0 };
        head.extend(phdr(PT_LOAD, flags, at, r.start, r.size, r.size, PAGE_SIZE));
        at += r.size;
        memory_bytes += r.size;
    }
    head.extend(notes);

    let tmp = temp_path(path);
    let result = (|| {
        let mut f = crate::access::new_file().open(&tmp)?;
        f.write_all(&head)?;
        // Where the first PT_LOAD's bytes start (as computed above).
        let mut off = (head.len() as u64).next_multiple_of(PAGE_SIZE);
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for r in &runs {
            let mut a = r.start;
            while a < r.end() {
                // Mapped by construction; a failed read dumps a hole.
                if vmem::read(mem, a, &mut page, vmem::Need::Present).is_err() {
                    page.fill(0);
                }
                patch(a, &mut page);
                if page.iter().any(|b| *b != 0) {
                    f.write_all_at(&page, off)?;
                }
                a += PAGE_SIZE;
                off += PAGE_SIZE;
            }
        }
        f.set_len(off)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(off)
    })();
    match result {
        Ok(bytes) => Ok(Written {
            bytes,
            memory_bytes,
        }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{Access, PageTables};
    use duet_abi::Gpa;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn writes_notes_and_user_memory_at_virtual_addresses() {
        let mem = GuestMem::new(8 << 20).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        pt.map_4k(&mem, 0x1000, 0x2000, Access::Supervisor).unwrap();
        pt.map_4k(&mem, 0x20_0000, 0x20_1000, Access::UserExec)
            .unwrap();
        pt.map_4k(&mem, 0x20_1000, 0x20_3000, Access::UserWrite)
            .unwrap();
        mem.write_bytes(Gpa(0x20_0000), &[0x55, 0xcc, 0x90])
            .unwrap();
        mem.write_bytes(Gpa(0x20_2010), b"stack").unwrap();
        let dir = tempdir();
        let path = dir.join("core");
        let regs = CoreRegs {
            regs: kvm_regs {
                rip: 0x20_0001,
                rsp: 0x20_2000,
                rax: 7,
                ..Default::default()
            },
            cs: 0x33,
            ss: 0x2b,
            ds: 0x2b,
            signal: 11,
            ..Default::default()
        };
        // The "debugger" put a breakpoint at 0x20_0001 over a 0x89.
        let patch = |a: u64, page: &mut [u8]| {
            if a == 0x20_0000 {
                page[1] = 0x89;
            }
        };
        let w = write(&path, &mem, &regs, &patch).unwrap();
        let b = std::fs::read(&path).unwrap();
        assert_eq!(w.bytes, b.len() as u64);
        assert_eq!(w.memory_bytes, 0x3000, "supervisor pages are left out");
        assert_eq!(&b[..4], b"\x7fELF");
        assert_eq!(u16_at(&b, 16), 4);
        let phnum = u16_at(&b, 56) as usize;
        assert_eq!(phnum, 3, "a note and two runs (text, data)");
        let ph = |i: usize| 64 + 56 * i;
        assert_eq!(u32_at(&b, ph(0)), PT_NOTE);
        let (noff, nlen) = (
            u64_at(&b, ph(0) + 8) as usize,
            u64_at(&b, ph(0) + 32) as usize,
        );
        // First note: NT_PRSTATUS from "CORE", signal and rip in place.
        assert_eq!(u32_at(&b, noff + 8), NT_PRSTATUS);
        assert_eq!(&b[noff + 12..noff + 17], b"CORE\0");
        let desc = noff + 20;
        assert_eq!(u32_at(&b, desc), 11);
        assert_eq!(u64_at(&b, desc + PR_REG + 16 * 8), 0x20_0001, "rip");
        assert_eq!(u64_at(&b, desc + PR_REG + 10 * 8), 7, "rax");
        assert_eq!(u64_at(&b, desc + PR_REG + 17 * 8), 0x33, "cs");
        assert_eq!(
            nlen,
            20 + PRSTATUS_SIZE,
            "no FPU state given, no NT_FPREGSET"
        );
        let load = |i: usize| {
            (
                u32_at(&b, ph(i) + 4),
                u64_at(&b, ph(i) + 8) as usize,
                u64_at(&b, ph(i) + 16),
                u64_at(&b, ph(i) + 32),
            )
        };
        let (flags, off, vaddr, size) = load(1);
        assert_eq!((flags, vaddr, size), (PF_R | PF_X, 0x20_0000, 0x1000));
        assert_eq!(off % PAGE_SIZE as usize, 0);
        assert_eq!(
            &b[off..off + 3],
            &[0x55, 0x89, 0x90],
            "breakpoint bytes are patched back"
        );
        let (flags, off, vaddr, size) = load(2);
        assert_eq!((flags, vaddr, size), (PF_R | PF_W, 0x20_1000, 0x2000));
        assert_eq!(&b[off + 0x1010..off + 0x1015], b"stack");
        assert!(!dir
            .join(format!("core.tmp-{}", std::process::id()))
            .exists());
        // A path in a directory that does not exist fails and leaves nothing.
        assert!(write(&dir.join("no/core"), &mem, &regs, &patch).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("duet-core-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
