//! Optional external reference: QEMU `-machine microvm -accel kvm` booting
//! a trivial guest that exits at once, timed as a whole process beside
//! `kvm-floor halt`. Skipped (with a note) when QEMU is not installed.
//!
//! The guest is a 32-bit ELF with a PVH entry note, written here: its code
//! writes [`EXIT_VALUE`] to an `isa-debug-exit` port, which ends QEMU with
//! a status only that write produces.

use super::stats::{quantile, time_process};
use super::{Ctx, Progress, Row};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const QEMU: &str = "qemu-system-x86_64";
/// QEMU boots take tens of ms: fewer runs than the boot section.
const MAX_RUNS: usize = 20;
/// Where the ELF (headers included) is loaded.
const LOAD: u32 = 0x10_0000;
/// The `isa-debug-exit` port.
const EXIT_PORT: u8 = 0xf4;
/// What the guest writes to the exit port; QEMU then exits with
/// `(EXIT_VALUE << 1) | 1`, a status no QEMU error produces.
const EXIT_VALUE: u8 = 0x21;
const EXIT_STATUS: i32 = ((EXIT_VALUE as i32) << 1) | 1;
/// XEN_ELFNOTE_PHYS32_ENTRY: the PVH 32-bit entry point note.
const PVH_NOTE: u32 = 18;

/// A 32-bit ELF: header, a PT_LOAD of the whole file, a PT_NOTE with the
/// PVH entry, and `mov al, EXIT_VALUE; out EXIT_PORT, al; 1: hlt; jmp 1b`.
fn halting_elf() -> Vec<u8> {
    const EHDR: u32 = 52;
    const PHDR: u32 = 32;
    let note_off = EHDR + 2 * PHDR;
    let note_len = 12 + 4 + 4;
    let code_off = note_off + note_len;
    let code = [0xb0, EXIT_VALUE, 0xe6, EXIT_PORT, 0xf4, 0xeb, 0xfd];
    let total = code_off + code.len() as u32;

    let mut f = Vec::new();
    let w16 = |f: &mut Vec<u8>, v: u16| f.extend_from_slice(&v.to_le_bytes());
    let w32 = |f: &mut Vec<u8>, v: u32| f.extend_from_slice(&v.to_le_bytes());
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    w16(&mut f, 2); // ET_EXEC
    w16(&mut f, 3); // EM_386
    w32(&mut f, 1);
    w32(&mut f, LOAD + code_off); // e_entry
    w32(&mut f, EHDR); // e_phoff
    w32(&mut f, 0); // e_shoff
    w32(&mut f, 0); // e_flags
    w16(&mut f, EHDR as u16);
    w16(&mut f, PHDR as u16);
    w16(&mut f, 2); // e_phnum
    w16(&mut f, 40);
    w16(&mut f, 0);
    w16(&mut f, 0);
    // PT_LOAD, R+X.
    for v in [1, 0, LOAD, LOAD, total, total, 5, 0x1000] {
        w32(&mut f, v);
    }
    // PT_NOTE.
    for v in [
        4,
        note_off,
        LOAD + note_off,
        LOAD + note_off,
        note_len,
        note_len,
        4,
        4,
    ] {
        w32(&mut f, v);
    }
    for v in [4, 4, PVH_NOTE] {
        w32(&mut f, v);
    }
    f.extend_from_slice(b"Xen\0");
    w32(&mut f, LOAD + code_off);
    f.extend_from_slice(&code);
    debug_assert_eq!(f.len() as u32, total);
    f
}

fn qemu_cmd(elf: &Path) -> Command {
    let mut c = Command::new(QEMU);
    // `-cpu host` fails on nested PVM (KVM refuses MSR 0x10a); the
    // default CPU model boots and the guest needs no feature.
    c.args(["-machine", "microvm", "-accel", "kvm", "-m", "16M"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "none", "-monitor", "none"])
        .arg("-kernel")
        .arg(elf)
        .args([
            "-device",
            &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1"),
        ]);
    c
}

/// One QEMU run to completion; its whole-process time in ms. Fails unless
/// QEMU ended through the guest's `isa-debug-exit` write.
fn time_qemu(elf: &Path) -> Result<f64> {
    let mut c = qemu_cmd(elf);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    let t = Instant::now();
    let out = c.output().with_context(|| format!("cannot run {QEMU}"))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if out.status.code() != Some(EXIT_STATUS) {
        bail!(
            "{QEMU} ended with {} instead of the guest's debug-exit status {EXIT_STATUS}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

pub fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        ctx.problem(
            "qemu",
            format!("skipped: {QEMU} is not installed (Debian: apt-get install qemu-system-x86)"),
        )?;
        return Ok(Vec::new());
    }
    let elf = ctx.out_dir.join("qemu-halt.elf");
    std::fs::write(&elf, halting_elf()).with_context(|| format!("writing {}", elf.display()))?;
    let n = ctx.runs.min(MAX_RUNS);
    time_qemu(&elf)?; // warm-up
    let floor = || {
        let mut c = Command::new(&ctx.floor);
        c.arg("halt");
        c
    };
    let (mut q, mut f) = (Vec::new(), Vec::new());
    let p = Progress::new("qemu: microvm halting guest vs kvm-floor halt", n);
    for i in 0..n {
        f.push(time_process(&mut floor())?);
        q.push(time_qemu(&elf)?);
        p.show(i + 1);
    }
    let rows = vec![Row::vs(
        "QEMU microvm halting guest (reference, not Duet), median",
        quantile(&q, 0.5),
        quantile(&f, 0.5),
        "ms",
    )];
    ctx.samples.insert("qemu_microvm_ms".into(), q);
    ctx.samples.insert("qemu_floor_ms".into(), f);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn elf_layout() {
        let f = super::halting_elf();
        assert_eq!(&f[..4], b"\x7fELF");
        let u32_at = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
        let entry = u32_at(24);
        // The note's descriptor is the entry, and the code sits there.
        let note = u32_at(52 + 32 + 4) as usize; // PT_NOTE p_offset
        assert_eq!(&f[note + 12..note + 16], b"Xen\0");
        assert_eq!(u32_at(note + 16), entry);
        let code = (entry - super::LOAD) as usize;
        assert_eq!(f[code], 0xb0);
        assert_eq!(u32_at(52 + 16) as usize, f.len()); // PT_LOAD p_filesz
    }
}
