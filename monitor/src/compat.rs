//! Can this host run a guest saved elsewhere? One check for restores and
//! for `duet run --incoming`: the CPU vendor and the feature words the
//! guest saw, its TSC rate, its memory size, and the kinds of its devices.

use crate::cpu::cpuid;
use duet_abi::boot::{DeviceInfo, DeviceKind};
use duet_abi::PAGE_SIZE;
use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The CPU a guest saw: vendor string and feature words, TSC rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCpu {
    /// CPUID vendor string.
    pub vendor: [u8; 12],
    /// Feature words: CPUID 1 ECX/EDX, 7.0 EBX/ECX/EDX, 0x8000_0001 ECX.
    pub features: [u32; 6],
    /// TSC frequency.
    pub tsc_khz: u64,
}

const FEATURE_NAMES: [&str; 6] = [
    "1 ECX",
    "1 EDX",
    "7 EBX",
    "7 ECX",
    "7 EDX",
    "0x80000001 ECX",
];

/// Why this host cannot run the guest.
#[derive(Debug, Error)]
pub enum CompatError {
    /// Another CPU vendor.
    #[error("the guest ran on a {guest} CPU, this host has a {host} CPU; use a host like the one it came from")]
    CpuVendor {
        /// The guest's.
        guest: String,
        /// The host's.
        host: String,
    },
    /// The host lacks CPU features the guest saw.
    #[error("the guest saw CPU features this host lacks (CPUID {leaf}: bits {missing:#x}); use a host with at least the same CPU")]
    CpuFeatures {
        /// Which CPUID word.
        leaf: &'static str,
        /// Missing bits.
        missing: u32,
    },
    /// The TSC rate cannot be matched.
    #[error("the guest's TSC runs at {guest} kHz and KVM here (host {host} kHz) cannot match it; use a host with the same or a faster TSC")]
    Tsc {
        /// The guest's.
        guest: u64,
        /// The host's.
        host: u64,
    },
    /// Impossible memory size.
    #[error("guest memory size {0} is invalid")]
    Memory(u64),
    /// A device kind this monitor does not know.
    #[error("the guest has a device ({0}) this duet cannot map")]
    Device(String),
    /// KVM failed while checking.
    #[error("KVM {what} failed while checking the host: {source}")]
    Kvm {
        /// Which call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CompatError {
    move |source| CompatError::Kvm { what, source }
}

/// The vendor string and feature words of a CPUID table.
pub fn signature(cpuid: &[kvm_cpuid_entry2]) -> ([u8; 12], [u32; 6]) {
    let leaf = |f: u32, i: u32| cpuid.iter().find(|e| e.function == f && e.index == i);
    let mut vendor = [0u8; 12];
    if let Some(e) = leaf(0, 0) {
        vendor[..4].copy_from_slice(&e.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&e.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&e.ecx.to_le_bytes());
    }
    let (l1, l7, lx) = (leaf(1, 0), leaf(7, 0), leaf(0x8000_0001, 0));
    let features = [
        l1.map_or(0, |e| e.ecx),
        l1.map_or(0, |e| e.edx),
        l7.map_or(0, |e| e.ebx),
        l7.map_or(0, |e| e.ecx),
        l7.map_or(0, |e| e.edx),
        lx.map_or(0, |e| e.ecx),
    ];
    (vendor, features)
}

/// Whether to try the TSC rate on a scratch vCPU now (a migration
/// destination, which must refuse before accepting pages), or leave it to
/// the vCPU's restore (a snapshot restore, which would pay ~0.1 ms twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscCheck {
    /// On a scratch vCPU, now.
    Now,
    /// When the vCPU is restored.
    AtRestore,
}

/// Checks this host (KVM `kvm`) can run a guest that saw `cpu`, with
/// `mem_size` bytes of memory.
pub fn check(kvm_: &Kvm, cpu: &GuestCpu, mem_size: u64, tsc: TscCheck) -> Result<(), CompatError> {
    if !(crate::layout::MIN_MEM..=crate::layout::MAX_MEM).contains(&mem_size)
        || mem_size % PAGE_SIZE != 0
    {
        return Err(CompatError::Memory(mem_size));
    }
    let host = cpuid::supported(kvm_).map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let (vendor, features) = signature(host.as_slice());
    if vendor != cpu.vendor {
        return Err(CompatError::CpuVendor {
            guest: String::from_utf8_lossy(&cpu.vendor).into_owned(),
            host: String::from_utf8_lossy(&vendor).into_owned(),
        });
    }
    for (i, (g, h)) in cpu.features.iter().zip(&features).enumerate() {
        if g & !h != 0 {
            return Err(CompatError::CpuFeatures {
                leaf: FEATURE_NAMES[i],
                missing: g & !h,
            });
        }
    }
    if tsc == TscCheck::Now {
        let khz = u32::try_from(cpu.tsc_khz).map_err(|_| CompatError::Tsc {
            guest: cpu.tsc_khz,
            host: 0,
        })?;
        // KVM scales only one way here: try it on a scratch vCPU.
        let vm = kvm_.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        let vcpu = vm.create_vcpu(0).map_err(kvm("KVM_CREATE_VCPU"))?;
        let here = vcpu.get_tsc_khz().unwrap_or(0);
        if here != khz && !(vcpu.set_tsc_khz(khz).is_ok() && vcpu.get_tsc_khz().ok() == Some(khz)) {
            return Err(CompatError::Tsc {
                guest: cpu.tsc_khz,
                host: u64::from(here),
            });
        }
    }
    Ok(())
}

/// One device as a peer describes it before any state moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// `DeviceKind` as a number.
    pub kind: u32,
    /// Device flags.
    pub flags: u32,
    /// A disk's capacity in bytes (0 for other kinds).
    pub capacity: u64,
}

impl DeviceSummary {
    /// The summary of a device-table entry.
    pub fn of(d: &DeviceInfo) -> Self {
        DeviceSummary {
            kind: d.kind,
            flags: d.flags,
            capacity: if d.kind == DeviceKind::Block as u32 {
                d.capacity
            } else {
                0
            },
        }
    }

    /// The kind, if this monitor knows it.
    pub fn kind(&self) -> Result<DeviceKind, CompatError> {
        match self.kind {
            k if k == DeviceKind::Block as u32 => Ok(DeviceKind::Block),
            k if k == DeviceKind::Net as u32 => Ok(DeviceKind::Net),
            k => Err(CompatError::Device(format!("kind {k}"))),
        }
    }
}

/// Counts a peer's devices by kind: (disks, NICs); unknown kinds refused.
pub fn count_devices(devices: &[DeviceSummary]) -> Result<(usize, usize), CompatError> {
    let (mut disks, mut nics) = (0, 0);
    for d in devices {
        match d.kind()? {
            DeviceKind::Block => disks += 1,
            DeviceKind::Net => nics += 1,
        }
    }
    Ok((disks, nics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_runs_its_own_guests_and_refuses_others() {
        let k = Kvm::new().expect("this test needs /dev/kvm");
        let host = cpuid::supported(&k).unwrap();
        let (vendor, features) = signature(host.as_slice());
        let mine = GuestCpu {
            vendor,
            features,
            tsc_khz: 0,
        };
        assert!(check(&k, &mine, 64 << 20, TscCheck::AtRestore).is_ok());
        let other = GuestCpu {
            vendor: *b"GenuineOther",
            ..mine
        };
        assert!(matches!(
            check(&k, &other, 64 << 20, TscCheck::AtRestore),
            Err(CompatError::CpuVendor { .. })
        ));
        let more = GuestCpu {
            features: [u32::MAX; 6],
            ..mine
        };
        assert!(matches!(
            check(&k, &more, 64 << 20, TscCheck::AtRestore),
            Err(CompatError::CpuFeatures { .. })
        ));
        assert!(matches!(
            check(&k, &mine, 5 << 20 | 1, TscCheck::AtRestore),
            Err(CompatError::Memory(_))
        ));
        let fast = GuestCpu {
            tsc_khz: u64::from(u32::MAX),
            ..mine
        };
        assert!(matches!(
            check(&k, &fast, 64 << 20, TscCheck::Now),
            Err(CompatError::Tsc { .. })
        ));
    }

    #[test]
    fn device_kinds_are_counted_and_unknown_ones_refused() {
        let d = |kind| DeviceSummary {
            kind,
            flags: 0,
            capacity: 0,
        };
        let ok = [
            d(DeviceKind::Block as u32),
            d(DeviceKind::Net as u32),
            d(DeviceKind::Net as u32),
        ];
        assert_eq!(count_devices(&ok).unwrap(), (1, 2));
        assert!(count_devices(&[d(99)]).is_err());
    }
}
