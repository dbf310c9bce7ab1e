//! [`Persist`]: how each component saves and restores its own state.
//!
//! A component turns itself into a serde `State` and is rebuilt from one
//! (plus whatever it needs from outside: `ConstructorArgs`). The snapshot
//! code only stores states in sections; a new device adds its record to
//! [`DeviceState`] and never touches the snapshot code.

use super::memfile::{self, MemIndex};
use super::SnapshotError;
use crate::bootinfo;
use crate::devices::{Device, DeviceState, Devices};
use crate::layout;
use crate::memory::GuestMem;
use crate::paging::PageTables;
use crate::vcpu::Vcpu;
use duet_abi::clock::ClockPage;
use duet_abi::PAGE_SIZE;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Save and restore one component's state.
pub trait Persist: Sized {
    /// The saved state.
    type State: Serialize + DeserializeOwned;
    /// What a restore needs besides the state.
    type ConstructorArgs<'a>;
    /// Why saving or restoring failed.
    type Error;
    /// Captures the component's state.
    fn save(&self) -> Result<Self::State, Self::Error>;
    /// Rebuilds the component from `state`.
    fn restore(args: Self::ConstructorArgs<'_>, state: &Self::State) -> Result<Self, Self::Error>;
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(format!("{what} failed: {e}"))
}

/// Largest MSR batch per ioctl (KVM's limit is 256).
const MSR_BATCH: usize = 200;

/// Everything KVM holds about the vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest saw.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// MSRs the host could save.
    pub msr_index: Vec<u32>,
    /// TSC frequency.
    pub tsc_khz: u32,
    /// General registers.
    pub regs: kvm_regs,
    /// Special registers.
    pub sregs: kvm_sregs,
    /// FPU and extended state.
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// MSR values (the ones KVM let us read).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs.
    pub events: kvm_vcpu_events,
    /// Multiprocessing state.
    pub mp_state: kvm_mp_state,
}

/// The guest's IA32_TSC MSR.
pub const MSR_IA32_TSC: u32 = 0x10;

impl VcpuState {
    /// The guest TSC when the state was saved.
    pub fn tsc(&self) -> Option<u64> {
        self.msrs
            .iter()
            .find(|m| m.index == MSR_IA32_TSC)
            .map(|m| m.data)
    }
}

/// Reads or writes `entries` in batches; a batch stops at the first MSR KVM
/// refuses, which is skipped (logged) and the rest go on. Returns the
/// entries that went through.
fn msrs_batched(
    fd: &VcpuFd,
    entries: &[kvm_msr_entry],
    set: bool,
) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut done = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        let chunk = &entries[i..entries.len().min(i + MSR_BATCH)];
        let mut m = Msrs::from_entries(chunk)
            .map_err(|e| SnapshotError::Kvm(format!("MSR batch: {e:?}")))?;
        let n = if set {
            fd.set_msrs(&m).map_err(kvm_err("KVM_SET_MSRS"))?
        } else {
            fd.get_msrs(&mut m).map_err(kvm_err("KVM_GET_MSRS"))?
        };
        done.extend_from_slice(&m.as_slice()[..n]);
        i += n;
        if n < chunk.len() {
            log::debug!("KVM refused MSR {:#x}; skipped", chunk[n].index);
            i += 1;
        }
    }
    Ok(done)
}

impl Persist for Vcpu {
    type State = VcpuState;
    type ConstructorArgs<'a> = (&'a Kvm, &'a VmFd);
    type Error = SnapshotError;

    fn save(&self) -> Result<VcpuState, SnapshotError> {
        let wanted: Vec<kvm_msr_entry> = self
            .msr_index
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        Ok(VcpuState {
            cpuid: self.cpuid.clone(),
            msr_index: self.msr_index.clone(),
            tsc_khz: self.get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))?,
            regs: self.get_regs().map_err(kvm_err("KVM_GET_REGS"))?,
            sregs: self.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?,
            xsave: self.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?,
            xcrs: self.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?,
            msrs: msrs_batched(self, &wanted, false)?,
            events: self
                .get_vcpu_events()
                .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?,
            mp_state: self.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?,
        })
    }

    fn restore((kvm, vm): (&Kvm, &VmFd), s: &VcpuState) -> Result<Vcpu, SnapshotError> {
        let cpuid = CpuId::from_entries(&s.cpuid)
            .map_err(|e| SnapshotError::Invalid(format!("saved CPUID does not fit: {e:?}")))?;
        let vcpu = Vcpu::create(kvm, vm, &cpuid).map_err(|e| SnapshotError::Kvm(e.to_string()))?;
        let host_khz = vcpu.get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))?;
        if host_khz != s.tsc_khz {
            // KVM scales only up; and check it took (it may accept a value
            // it cannot then report).
            let tsc_err = |why: String| SnapshotError::Tsc {
                snap: u64::from(s.tsc_khz),
                host: u64::from(host_khz),
                why,
            };
            vcpu.set_tsc_khz(s.tsc_khz)
                .map_err(|e| tsc_err(e.to_string()))?;
            match vcpu.get_tsc_khz() {
                Ok(k) if k == s.tsc_khz => {}
                Ok(k) => return Err(tsc_err(format!("it runs at {k} kHz instead"))),
                Err(e) => return Err(tsc_err(e.to_string())),
            }
        }
        vcpu.set_mp_state(s.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&s.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        vcpu.set_sregs(&s.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        // SAFETY: the buffer is a whole `kvm_xsave` KVM gave us for a vCPU
        // with the same CPUID (the header's vendor/feature check passed).
        unsafe { vcpu.set_xsave(&s.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&s.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        let set = msrs_batched(&vcpu, &s.msrs, true)?;
        if s.tsc().is_some() && !set.iter().any(|m| m.index == MSR_IA32_TSC) {
            return Err(SnapshotError::Kvm(
                "KVM refused to restore the guest TSC".into(),
            ));
        }
        vcpu.set_vcpu_events(&s.events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        Ok(vcpu)
    }
}

/// The guest's clock page as the monitor last wrote it.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestClock {
    /// The page.
    pub page: ClockPage,
}

/// Saved clock page fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockState {
    /// Restores so far.
    pub generation: u32,
    /// TSC frequency.
    pub tsc_khz: u64,
    /// Scale.
    pub mult: u64,
    /// Base TSC.
    pub base_tsc: u64,
    /// Monotonic ns at `base_tsc`.
    pub base_mono_ns: u64,
    /// Wall ns at `base_tsc`.
    pub base_wall_ns: u64,
}

/// What a clock restore needs: guest memory to publish the page in, the
/// guest TSC when it was saved and now, and the host's wall time now.
pub struct ClockArgs<'a> {
    /// Guest memory.
    pub mem: &'a GuestMem,
    /// Guest TSC at save.
    pub tsc_at_save: u64,
    /// Guest TSC now.
    pub tsc_now: u64,
    /// Host wall clock now (ns since the epoch).
    pub wall_now_ns: u64,
}

impl Persist for GuestClock {
    type State = ClockState;
    type ConstructorArgs<'a> = ClockArgs<'a>;
    type Error = SnapshotError;

    fn save(&self) -> Result<ClockState, SnapshotError> {
        let p = &self.page;
        Ok(ClockState {
            generation: p.generation,
            tsc_khz: p.tsc_khz,
            mult: p.mult,
            base_tsc: p.base_tsc,
            base_mono_ns: p.base_mono_ns,
            base_wall_ns: p.base_wall_ns,
        })
    }

    /// Monotonic time goes on from where it was at save; wall time is the
    /// host's now; the generation goes up.
    fn restore(a: ClockArgs<'_>, s: &ClockState) -> Result<GuestClock, SnapshotError> {
        let old = ClockPage {
            seq: 0,
            generation: s.generation,
            tsc_khz: s.tsc_khz,
            mult: s.mult,
            base_tsc: s.base_tsc,
            base_mono_ns: s.base_mono_ns,
            base_wall_ns: s.base_wall_ns,
        };
        let page = ClockPage {
            generation: s.generation.wrapping_add(1),
            base_tsc: a.tsc_now,
            base_mono_ns: old.mono_ns(a.tsc_at_save),
            base_wall_ns: a.wall_now_ns,
            ..old
        };
        bootinfo::write_clock(a.mem, &page)
            .map_err(|e| SnapshotError::Invalid(format!("writing the clock page: {e}")))?;
        Ok(GuestClock { page })
    }
}

impl Persist for PageTables {
    type State = u64;
    type ConstructorArgs<'a> = ();
    type Error = SnapshotError;

    fn save(&self) -> Result<u64, SnapshotError> {
        Ok(self.next_table())
    }

    fn restore((): (), next: &u64) -> Result<PageTables, SnapshotError> {
        let ok = (layout::PAGE_TABLES + PAGE_SIZE..=layout::PAGE_TABLES_END).contains(next)
            && next % PAGE_SIZE == 0;
        if !ok {
            return Err(SnapshotError::Invalid(format!(
                "page-table allocator position {next:#x} is outside the page-table area"
            )));
        }
        Ok(PageTables::resume_at(*next))
    }
}

/// Guest memory's own state (the pages themselves go to the memory file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemState {
    /// Size in bytes.
    pub size: u64,
    /// Guest-writable ranges.
    pub writable: Vec<(u64, u64)>,
}

/// What a memory restore needs: the memory file and its index.
pub struct MemArgs<'a> {
    /// The memory file.
    pub path: &'a Path,
    /// Its index.
    pub index: &'a MemIndex,
    /// The snapshot id both files carry.
    pub id: u64,
    /// Check every range's CRC (reads the populated pages once).
    pub verify: bool,
}

impl Persist for GuestMem {
    type State = MemState;
    type ConstructorArgs<'a> = MemArgs<'a>;
    type Error = SnapshotError;

    fn save(&self) -> Result<MemState, SnapshotError> {
        Ok(MemState {
            size: self.size(),
            writable: self.writable().to_vec(),
        })
    }

    fn restore(a: MemArgs<'_>, s: &MemState) -> Result<GuestMem, SnapshotError> {
        if !(layout::MIN_MEM..=layout::MAX_MEM).contains(&s.size) || s.size % PAGE_SIZE != 0 {
            return Err(SnapshotError::Invalid(format!(
                "guest memory size {} is invalid",
                s.size
            )));
        }
        if a.index.size != s.size {
            return Err(SnapshotError::Invalid(
                "memory index and memory size disagree".into(),
            ));
        }
        for &(start, end) in &s.writable {
            if start > end || end > s.size {
                return Err(SnapshotError::Invalid(format!(
                    "writable range {start:#x}..{end:#x} is outside guest memory"
                )));
            }
        }
        let mut mem = memfile::map(a.path, a.index, a.id, a.verify)?;
        mem.set_writable(s.writable.clone());
        Ok(mem)
    }
}

impl Persist for Devices {
    type State = Vec<DeviceState>;
    type ConstructorArgs<'a> = ();
    type Error = SnapshotError;

    fn save(&self) -> Result<Vec<DeviceState>, SnapshotError> {
        Ok(self.list.iter().map(Device::save).collect())
    }

    fn restore((): (), s: &Vec<DeviceState>) -> Result<Devices, SnapshotError> {
        if s.len() > duet_abi::boot::MAX_DEVICES {
            return Err(SnapshotError::Invalid(format!(
                "{} devices is too many",
                s.len()
            )));
        }
        let list = s
            .iter()
            .enumerate()
            .map(|(id, d)| Device::restore(d, id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Devices { list })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round<T: Serialize + DeserializeOwned>(v: &T) -> T {
        postcard::from_bytes(&postcard::to_stdvec(v).unwrap()).unwrap()
    }

    #[test]
    fn clock_round_trip_keeps_monotonic_time() {
        let mem = GuestMem::new(8 << 20).unwrap();
        let page = ClockPage {
            seq: 0,
            generation: 3,
            tsc_khz: 1_000_000,
            mult: ClockPage::mult_for(1_000_000),
            base_tsc: 1_000,
            base_mono_ns: 5_000,
            base_wall_ns: 77,
        };
        let s = round(&GuestClock { page }.save().unwrap());
        let args = ClockArgs {
            mem: &mem,
            tsc_at_save: 3_000,
            tsc_now: 10,
            wall_now_ns: 999,
        };
        let c = GuestClock::restore(args, &s).unwrap();
        assert_eq!(c.page.generation, 4);
        assert_eq!(c.page.base_mono_ns, 7_000);
        assert_eq!(c.page.base_wall_ns, 999);
        let seen: ClockPage = mem.read_plain(duet_abi::Gpa(layout::CLOCK_PAGE)).unwrap();
        assert_eq!(seen.base_mono_ns, 7_000);
        assert_eq!(seen.seq % 2, 0);
    }

    #[test]
    fn page_tables_round_trip_and_reject_garbage() {
        let mem = GuestMem::new(8 << 20).unwrap();
        let mut pt = PageTables::new();
        pt.map_4k(&mem, 0x1000, 0x2000, crate::paging::Access::Supervisor)
            .unwrap();
        let s = round(&pt.save().unwrap());
        assert_eq!(
            PageTables::restore((), &s).unwrap().next_table(),
            pt.next_table()
        );
        assert!(PageTables::restore((), &0).is_err());
        assert!(PageTables::restore((), &(layout::PAGE_TABLES_END + PAGE_SIZE)).is_err());
    }

    #[test]
    fn devices_round_trip() {
        let d = Devices::default();
        let s = round(&d.save().unwrap());
        assert_eq!(Devices::restore((), &s).unwrap().list.len(), 0);
    }

    #[test]
    fn memory_round_trip() {
        let dir = std::env::temp_dir().join(format!("duet-memtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut mem = GuestMem::new(8 << 20).unwrap();
        mem.set_writable(vec![(0x1000, 0x3000)]);
        mem.write_bytes(duet_abi::Gpa(0x1234), b"hello").unwrap();
        mem.write_bytes(duet_abi::Gpa(0x50_0000), b"world").unwrap();
        let path = dir.join("memory");
        let index = memfile::dump(&mem, &path, 7).unwrap();
        assert!(index.pages() >= 2);
        let s = round(&mem.save().unwrap());
        let args = |verify| MemArgs {
            path: &path,
            index: &index,
            id: 7,
            verify,
        };
        let back = GuestMem::restore(args(true), &s).unwrap();
        let mut b = [0u8; 5];
        back.read_bytes(duet_abi::Gpa(0x1234), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        back.read_bytes(duet_abi::Gpa(0x50_0000), &mut b).unwrap();
        assert_eq!(&b, b"world");
        assert_eq!(back.writable(), mem.writable());
        // Copy-on-write: writing the restored memory leaves the file alone.
        back.write_bytes(duet_abi::Gpa(0x1234), b"HELLO").unwrap();
        let again = GuestMem::restore(args(true), &s).unwrap();
        again.read_bytes(duet_abi::Gpa(0x1234), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        // A wrong snapshot id is refused.
        let bad = MemArgs {
            id: 8,
            ..args(false)
        };
        assert!(GuestMem::restore(bad, &s).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vcpu_round_trip() {
        let kvm = Kvm::new().unwrap();
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = Vcpu::create(&kvm, &vm, &cpuid).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rax = 0x1234_5678;
        regs.rip = 0x20_0000;
        regs.rflags = 0x202;
        vcpu.set_regs(&regs).unwrap();
        let s = round(&vcpu.save().unwrap());
        let vm2 = kvm.create_vm().unwrap();
        let back = Vcpu::restore((&kvm, &vm2), &s).unwrap();
        let r = back.get_regs().unwrap();
        assert_eq!((r.rax, r.rip, r.rflags), (0x1234_5678, 0x20_0000, 0x202));
        assert_eq!(back.get_sregs().unwrap().cr0, vcpu.get_sregs().unwrap().cr0);
        assert!(s.tsc().is_some());
    }
}
