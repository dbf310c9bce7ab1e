//! Writes the boot info, argv/env and the clock page into guest memory.

use crate::layout;
use crate::memory::{GuestMem, MemError};
use duet_abi::boot::{
    BootInfo, DeviceInfo, MemRegion, RegionKind, Str, BOOT_FLAG_IDENTITY, BOOT_MAGIC, MAX_DEVICES,
    MAX_REGIONS,
};
use duet_abi::clock::ClockPage;
use duet_abi::identity::IdentityPage;
use duet_abi::{Gpa, ABI_VERSION};
use std::mem::size_of;
use thiserror::Error;

/// Why the boot info could not be written.
#[derive(Debug, Error)]
pub enum BootInfoError {
    /// argv + env do not fit.
    #[error("arguments and environment need {need} bytes, more than the {limit} bytes the boot area holds; pass less")]
    TooLarge {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        limit: u64,
    },
    /// Too many regions or devices (a monitor bug).
    #[error("too many memory regions or devices for the boot info")]
    TooMany,
    /// Memory write failed (a monitor bug).
    #[error(transparent)]
    Mem(#[from] MemError),
}

/// Everything that goes into the boot info besides argv and env.
pub struct BootParams<'a> {
    /// `BOOT_FLAG_*` bits.
    pub flags: u32,
    /// Guest memory size.
    pub mem_size: u64,
    /// TSC frequency in kHz.
    pub tsc_khz: u64,
    /// The memory map.
    pub regions: &'a [(u64, u64, RegionKind)],
    /// The device table.
    pub devices: &'a [DeviceInfo],
    /// Heap start, mapped size, and limit.
    pub heap: (u64, u64, u64),
    /// Arguments.
    pub args: &'a [String],
    /// `KEY=VALUE` environment entries.
    pub env: &'a [String],
}

/// Writes the boot info at [`layout::BOOT_INFO`], followed by the argv and
/// env arrays and their strings. Returns the boot info's address.
pub fn write(mem: &GuestMem, p: &BootParams<'_>) -> Result<u64, BootInfoError> {
    if p.regions.len() > MAX_REGIONS || p.devices.len() > MAX_DEVICES {
        return Err(BootInfoError::TooMany);
    }
    let area = layout::BOOT_INFO_END - layout::BOOT_INFO;
    let str_size = size_of::<Str>() as u64;
    let arrays = (p.args.len() + p.env.len()) as u64 * str_size;
    let strings: u64 = p.args.iter().chain(p.env).map(|s| s.len() as u64).sum();
    let header = (size_of::<BootInfo>() as u64).next_multiple_of(16);
    let need = header + arrays + strings;
    if need > area {
        return Err(BootInfoError::TooLarge { need, limit: area });
    }

    let argv = layout::BOOT_INFO + header;
    let envp = argv + p.args.len() as u64 * str_size;
    let mut text = envp + p.env.len() as u64 * str_size;
    for (i, s) in p.args.iter().chain(p.env).enumerate() {
        mem.write_bytes(Gpa(text), s.as_bytes())?;
        let entry = Str {
            ptr: Gpa(text),
            len: s.len() as u64,
        };
        mem.write_monitor_plain(Gpa(argv + i as u64 * str_size), &entry)?;
        text += s.len() as u64;
    }

    let mut regions = [MemRegion::default(); MAX_REGIONS];
    for (r, &(start, len, kind)) in regions.iter_mut().zip(p.regions) {
        *r = MemRegion {
            start: Gpa(start),
            len,
            kind: kind as u32,
            flags: 0,
        };
    }
    let mut devices = [DeviceInfo::default(); MAX_DEVICES];
    devices[..p.devices.len()].copy_from_slice(p.devices);
    let bi = BootInfo {
        magic: BOOT_MAGIC,
        abi_version: ABI_VERSION,
        flags: p.flags | BOOT_FLAG_IDENTITY,
        mem_size: p.mem_size,
        tsc_khz: p.tsc_khz,
        clock: Gpa(layout::CLOCK_PAGE),
        region_count: p.regions.len() as u32,
        device_count: p.devices.len() as u32,
        regions,
        devices,
        argc: p.args.len() as u32,
        envc: p.env.len() as u32,
        argv: Gpa(argv),
        envp: Gpa(envp),
        heap_start: Gpa(p.heap.0),
        heap_size: p.heap.1,
        heap_limit: p.heap.2,
        identity: Gpa(layout::IDENTITY_PAGE),
    };
    mem.write_monitor_plain(Gpa(layout::BOOT_INFO), &bi)?;
    Ok(layout::BOOT_INFO)
}

/// Writes a seqlocked page at `at` as the writer: odd sequence, fields, even
/// sequence, so a guest reading concurrently never accepts a torn copy.
/// `seq` names the page's sequence field.
fn write_seqlocked<T: duet_abi::Plain>(
    mem: &GuestMem,
    at: Gpa,
    page: &T,
    seq: fn(&mut T) -> &mut u32,
) -> Result<(), MemError> {
    use std::sync::atomic::{fence, Ordering};
    let mut cur: T = mem.read_plain(at)?;
    let odd = seq(&mut cur).wrapping_add(1) | 1;
    *seq(&mut cur) = odd;
    mem.write_monitor_plain(at, &cur)?;
    fence(Ordering::SeqCst);
    let mut p = *page;
    *seq(&mut p) = odd;
    mem.write_monitor_plain(at, &p)?;
    fence(Ordering::SeqCst);
    *seq(&mut p) = odd.wrapping_add(1);
    mem.write_monitor_plain(at, &p)
}

/// Writes the clock page (seqlocked). Safe to call while the guest runs.
pub fn write_clock(mem: &GuestMem, page: &ClockPage) -> Result<(), MemError> {
    write_seqlocked(mem, Gpa(layout::CLOCK_PAGE), page, |p| &mut p.seq)
}

/// Writes the identity page (seqlocked). Safe to call while the guest runs.
pub fn write_identity(mem: &GuestMem, page: &IdentityPage) -> Result<(), MemError> {
    write_seqlocked(mem, Gpa(layout::IDENTITY_PAGE), page, |p| &mut p.seq)
}

/// A fresh random 128-bit seed from the host's `getrandom`.
pub fn random_seed() -> [u64; 2] {
    let mut b = [0u8; 16];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: writes at most `b.len() - got` bytes into our own buffer.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n <= 0 {
            // getrandom on Linux >= 3.17 does not fail for 16 bytes; should it,
            // mix the time in rather than hand out a fixed seed.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            return [t ^ u64::from(std::process::id()), t.rotate_left(17)];
        }
        got += n as usize;
    }
    [
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
    ]
}
