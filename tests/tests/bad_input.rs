//! Bad images, bad options and a missing KVM are refused before boot with a
//! message that names the problem.

use duet_tests::elf::{self, P_FILESZ, P_FLAGS, P_MEMSZ, P_VADDR};
use duet_tests::{duet, duet_cmd, image, run_cmd, status};
use std::time::Duration;

const ERR: i32 = status::MONITOR_ERROR as i32;

fn hello_bytes() -> Vec<u8> {
    std::fs::read(image("hello")).unwrap()
}

/// Writes `bytes` to a temp file and runs it.
fn run_bytes(bytes: &[u8]) -> duet_tests::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("image");
    std::fs::write(&p, bytes).unwrap();
    duet(&["run", p.to_str().unwrap()])
}

fn patched(f: impl FnOnce(&mut Vec<u8>)) -> duet_tests::Output {
    let mut b = hello_bytes();
    f(&mut b);
    run_bytes(&b)
}

#[test]
fn rejects_empty_and_non_elf_files() {
    run_bytes(b"")
        .expect_status(ERR)
        .expect_stderr("the image file is empty");
    run_bytes(b"#!/bin/sh\necho hi\n")
        .expect_status(ERR)
        .expect_stderr("not an ELF file");
    duet(&["run", "/nonexistent/image"])
        .expect_status(ERR)
        .expect_stderr("cannot read image /nonexistent/image");
    duet(&["run", "/"])
        .expect_status(ERR)
        .expect_stderr("cannot read image /");
}

#[test]
fn rejects_wrong_class_machine_and_type() {
    patched(|b| b[4] = 1)
        .expect_status(ERR)
        .expect_stderr("32-bit ELF image");
    patched(|b| elf::set_u16(b, 0x12, 183))
        .expect_status(ERR)
        .expect_stderr("not x86_64");
    patched(|b| elf::set_u16(b, 0x10, 3))
        .expect_status(ERR)
        .expect_stderr("not a static executable");
    patched(|b| elf::set_u16(b, 0x10, 1))
        .expect_status(ERR)
        .expect_stderr("not a static executable");
}

#[test]
fn rejects_bad_segments() {
    // Below the image base (where the monitor's structures live).
    patched(|b| {
        let ph = elf::load_headers(b)[0];
        elf::set_u64(b, ph + P_VADDR, 0x1000);
    })
    .expect_status(ERR)
    .expect_stderr("lies outside guest memory");
    // Beyond guest memory.
    patched(|b| {
        let ph = *elf::load_headers(b).last().unwrap();
        elf::set_u64(b, ph + P_VADDR, 0x7fff_0000_0000);
    })
    .expect_status(ERR)
    .expect_stderr("lies outside guest memory");
    // Huge and overflowing sizes.
    patched(|b| {
        let ph = *elf::load_headers(b).last().unwrap();
        elf::set_u64(b, ph + P_MEMSZ, 1 << 40);
    })
    .expect_status(ERR)
    .expect_stderr("impossible size");
    patched(|b| {
        let ph = *elf::load_headers(b).last().unwrap();
        elf::set_u64(b, ph + P_MEMSZ, u64::MAX - 10);
    })
    .expect_status(ERR)
    .expect_stderr("impossible size");
    // File bytes past the end of the file.
    patched(|b| {
        let ph = elf::load_headers(b)[0];
        elf::set_u64(b, ph + P_FILESZ, 1 << 30);
        elf::set_u64(b, ph + P_MEMSZ, 1 << 30);
    })
    .expect_status(ERR)
    .expect_stderr("beyond the end of the");
    // Two segments on the same pages.
    patched(|b| {
        let phs = elf::load_headers(b);
        let v0 = elf::u64_at(b, phs[0] + P_VADDR);
        elf::set_u64(b, phs[1] + P_VADDR, v0);
    })
    .expect_status(ERR)
    .expect_stderr("overlap");
    // Writable + executable text.
    patched(|b| {
        for ph in elf::load_headers(b) {
            if elf::u16_at(b, ph + P_FLAGS) & 1 != 0 {
                elf::set_u32(b, ph + P_FLAGS, 7);
            }
        }
    })
    .expect_status(ERR)
    .expect_stderr("both writable and executable");
}

#[test]
fn rejects_entry_outside_text() {
    patched(|b| elf::set_u64(b, 0x18, 0x20_0000))
        .expect_status(ERR)
        .expect_stderr("entry point 0x200000");
    patched(|b| elf::set_u64(b, 0x18, 0xdead_0000))
        .expect_status(ERR)
        .expect_stderr("not inside an executable segment");
}

#[test]
fn rejects_images_without_a_valid_duet_header() {
    let find = |b: &[u8], pat: &[u8]| b.windows(pat.len()).position(|w| w == pat).unwrap();
    patched(|b| {
        let at = find(b, b".duet.header");
        b[at + 1] = b'X';
    })
    .expect_status(ERR)
    .expect_stderr("not a Duet image");
    let magic = duet_abi::boot::IMAGE_MAGIC.to_le_bytes();
    patched(|b| {
        let at = find(b, &magic);
        b[at] ^= 0xff;
    })
    .expect_status(ERR)
    .expect_stderr("bad magic");
    let abi = duet_abi::ABI_VERSION;
    patched(|b| {
        let at = find(b, &magic);
        elf::set_u32(b, at + 8, abi + 1);
    })
    .expect_status(ERR)
    .expect_stderr(&format!("built for Duet ABI version {}", abi + 1))
    .expect_stderr(&format!("this duet speaks ABI version {abi}"));
}

#[test]
fn images_built_for_abi_version_1_are_refused_by_name() {
    // A version-1 image supplied its own ring-0 exception stubs; its header
    // starts with the same magic and version, so it is recognised and
    // refused with the remedy, not called corrupt.
    assert_eq!(duet_abi::ABI_VERSION, 3);
    let magic = duet_abi::boot::IMAGE_MAGIC.to_le_bytes();
    let mut b = hello_bytes();
    let at = b.windows(8).position(|w| w == magic).unwrap();
    elf::set_u32(&mut b, at + 8, 1);
    run_bytes(&b)
        .expect_status(ERR)
        .expect_stderr("image was built for Duet ABI version 1, but this duet speaks ABI version 3")
        .expect_stderr("rebuild the image against this duet");
}

#[test]
fn rejects_bad_memory_sizes() {
    let img = image("hello");
    let img = img.to_str().unwrap();
    for (mem, msg) in [
        ("1M", "too small"),
        ("100G", "too large"),
        ("lots", "not a memory size"),
        ("5M", "not a multiple of 2 MiB"),
        ("", "not a memory size"),
    ] {
        let o = duet(&["run", img, "--mem", mem]);
        o.expect_status(status::USAGE as i32).expect_stderr(msg);
    }
    duet(&["run", img, "--env", "NOEQUALS"])
        .expect_status(status::USAGE as i32)
        .expect_stderr("is not KEY=VALUE");
}

#[test]
fn missing_or_wrong_kvm_device_names_the_remedy() {
    let img = image("hello");
    let img = img.to_str().unwrap();
    duet(&["run", img, "--kvm-device", "/nonexistent/kvm"])
        .expect_status(ERR)
        .expect_stderr("no such device")
        .expect_stderr("modprobe");
    duet(&["run", img, "--kvm-device", "/dev/null"])
        .expect_status(ERR)
        .expect_stderr("not a KVM device");
    let mut c = duet_cmd(&["run", img]);
    c.env("DUET_KVM_DEVICE", "/nonexistent/kvm2");
    run_cmd(c, Duration::from_secs(30))
        .expect_status(ERR)
        .expect_stderr("/nonexistent/kvm2: no such device");
}
