//! The guest's CPUID: what KVM supports, cached per host boot.
//!
//! `KVM_GET_SUPPORTED_CPUID` costs ~0.3 ms here, a tenth of a whole `duet
//! run`. Its answer only changes when KVM does (a reboot, a module reload),
//! so the monitor keeps it in a file named after the kernel's boot id in a
//! directory only the user can write (`$XDG_RUNTIME_DIR`, or `/run/duet` for
//! root). A cache that is missing, unreadable, malformed or refused by
//! `KVM_SET_CPUID2` is simply rebuilt from KVM.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use std::io::Write;
use std::path::PathBuf;

const MAGIC: &[u8; 8] = b"DUETCPU1";

/// Leaves the vCPU is not given. Their mere presence makes `KVM_SET_CPUID2`
/// query the host CPU for every XSAVE component and feature word (each
/// query an exit to the outer hypervisor here): 0.1 ms, a twentieth of a
/// whole `duet run`, against 0.02 ms without them (measured). A Duet guest
/// runs at CPL 3, learns what it needs from the boot info, and its XCR0
/// stays x87 only, so neither leaf changes what it can do. Snapshots and
/// compatibility checks keep the full set: a guest may still use any
/// feature of its host natively, so a restore host must have them all.
const NOT_GIVEN: [u32; 2] = [0x1, 0xd];

/// What KVM is given of `cpuid`: all but [`NOT_GIVEN`].
pub fn for_kvm(cpuid: &CpuId) -> CpuId {
    let given: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| !NOT_GIVEN.contains(&e.function))
        .copied()
        .collect();
    CpuId::from_entries(&given).expect("a subset of a valid CPUID fits")
}
const ENTRY: usize = 40;

fn cache_path() -> Option<PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    // Only an absolute runtime directory: an empty or relative one (a
    // container engine's environment) would drop the file into the cwd.
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute());
    let dir = match runtime {
        Some(d) => d,
        // SAFETY: geteuid has no preconditions.
        None if unsafe { libc::geteuid() } == 0 => PathBuf::from("/run/duet"),
        None => return None,
    };
    Some(dir.join(format!("duet-cpuid-{}", boot_id.trim())))
}

fn encode(cpuid: &CpuId) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(cpuid.as_slice().len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for e in cpuid.as_slice() {
        for v in [
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx, 0, 0, 0,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Option<CpuId> {
    let body = bytes.strip_prefix(MAGIC)?;
    let n = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let entries = body.get(8..)?;
    if n == 0 || n > KVM_MAX_CPUID_ENTRIES || entries.len() != n * ENTRY {
        return None;
    }
    let list: Vec<kvm_cpuid_entry2> = entries
        .chunks_exact(ENTRY)
        .map(|c| {
            let w = |i: usize| u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            kvm_cpuid_entry2 {
                function: w(0),
                index: w(1),
                flags: w(2),
                eax: w(3),
                ebx: w(4),
                ecx: w(5),
                edx: w(6),
                ..Default::default()
            }
        })
        .collect();
    CpuId::from_entries(&list).ok()
}

fn store(cpuid: &CpuId) {
    let Some(path) = cache_path() else { return };
    let dir = path.parent().expect("cache path has a directory");
    let _ = std::fs::create_dir_all(dir);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(&encode(cpuid)));
    if written.is_ok() && std::fs::rename(&tmp, &path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

fn cached() -> Option<CpuId> {
    decode(&std::fs::read(cache_path()?).ok()?)
}

/// The CPUID KVM supports, from the cache when there is one (for checks
/// that do not set it on a vCPU, such as a snapshot's CPU features).
pub fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    if let Some(cached) = cached() {
        return Ok(cached);
    }
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    store(&cpuid);
    Ok(cpuid)
}

/// Gives `vcpu` the CPUID KVM supports ([`for_kvm`] of it), from the cache
/// when it is valid. Returns the whole supported set.
pub fn setup(kvm: &Kvm, vcpu: &VcpuFd) -> Result<CpuId, kvm_ioctls::Error> {
    if let Some(cached) = cached() {
        if vcpu.set_cpuid2(&for_kvm(&cached)).is_ok() {
            return Ok(cached);
        }
        log::debug!("cached CPUID refused by KVM; asking KVM again");
    }
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    vcpu.set_cpuid2(&for_kvm(&cpuid))?;
    store(&cpuid);
    Ok(cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let e = kvm_cpuid_entry2 {
            function: 1,
            index: 0,
            flags: 0,
            eax: 2,
            ebx: 3,
            ecx: 4,
            edx: 5,
            ..Default::default()
        };
        let c = CpuId::from_entries(&[e, e]).unwrap();
        let bytes = encode(&c);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.as_slice().len(), 2);
        assert_eq!(back.as_slice()[1].edx, 5);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(b"DUETCPU1\xff\xff\xff\xff\0\0\0\0").is_none());
        assert!(decode(b"garbage").is_none());
    }
}
