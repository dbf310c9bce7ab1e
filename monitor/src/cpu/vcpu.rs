//! A vCPU: its fd, the CPUID it was given, and everything KVM holds about
//! it as a saved state ([`VcpuState`], through [`Persist`]).

use crate::persist::{kvm_err, Persist, StateError};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

/// The guest's IA32_TSC MSR.
pub const MSR_IA32_TSC: u32 = 0x10;
/// Largest MSR batch per ioctl (KVM's limit is 256).
const MSR_BATCH: usize = 200;

/// A vCPU.
pub struct Vcpu {
    fd: VcpuFd,
    /// For the MSR list, asked only when the state is first saved (a boot
    /// that is never saved does not pay for it).
    kvm: Arc<Kvm>,
    msr_index: OnceLock<Vec<u32>>,
    /// The host CPUID the guest started with (KVM was given
    /// [`super::cpuid::for_kvm`] of it).
    cpuid: Vec<kvm_cpuid_entry2>,
}

impl Vcpu {
    /// Creates vCPU `id` of `vm` started with `cpuid` (KVM is given
    /// [`super::cpuid::for_kvm`] of it).
    pub fn create(kvm: &Arc<Kvm>, vm: &VmFd, id: u64, cpuid: &CpuId) -> Result<Self, StateError> {
        let fd = vm.create_vcpu(id).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&super::cpuid::for_kvm(cpuid))
            .map_err(kvm_err("KVM_SET_CPUID2"))?;
        Ok(Self::new(kvm, fd, cpuid))
    }

    /// Wraps vCPU `fd`, already started with `cpuid`.
    pub fn new(kvm: &Arc<Kvm>, fd: VcpuFd, cpuid: &CpuId) -> Self {
        Vcpu {
            fd,
            kvm: kvm.clone(),
            msr_index: OnceLock::new(),
            cpuid: cpuid.as_slice().to_vec(),
        }
    }

    /// The host CPUID the guest started with: what snapshots record and
    /// compatibility checks compare.
    pub fn cpuid(&self) -> &[kvm_cpuid_entry2] {
        &self.cpuid
    }

    /// Runs `KVM_RUN` with `immediate_exit` set: KVM finishes the exit in
    /// progress (the `out` of the last hypercall) without entering the
    /// guest, so saved registers point past it.
    pub fn complete_io(&mut self) -> Result<(), String> {
        self.set_immediate_exit(true);
        let r = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(format!("KVM_RUN (completing I/O) failed: {e}")),
            Ok(exit) => Err(format!(
                "KVM_RUN with immediate_exit entered the guest ({exit:?})"
            )),
        };
        self.set_immediate_exit(false);
        r
    }

    /// The `kvm_run` page's `immediate_exit`, which the control thread also
    /// sets (to kick the vCPU), so it is only ever touched atomically.
    pub fn immediate_exit(&mut self) -> *mut u8 {
        let run: *mut kvm_bindings::kvm_run = self.fd.get_kvm_run();
        // SAFETY: `run` is the vCPU's mmapped kvm_run page, alive as long
        // as the fd; only a raw field pointer is formed.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit) }
    }

    fn set_immediate_exit(&mut self, on: bool) {
        let p = self.immediate_exit();
        // SAFETY: `p` points at a live u8 of the kvm_run page that every
        // thread accesses atomically.
        unsafe { std::sync::atomic::AtomicU8::from_ptr(p) }
            .store(u8::from(on), std::sync::atomic::Ordering::SeqCst);
    }

    /// The guest's TSC now.
    pub fn tsc(&self) -> Result<u64, StateError> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        }])
        .map_err(|e| StateError::Invalid(format!("{e:?}")))?;
        self.fd
            .get_msrs(&mut msrs)
            .map_err(kvm_err("KVM_GET_MSRS"))?;
        Ok(msrs.as_slice()[0].data)
    }

    fn msr_index(&self) -> Result<&[u32], StateError> {
        if let Some(v) = self.msr_index.get() {
            return Ok(v);
        }
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(self.msr_index.get_or_init(|| list))
    }
}

impl Deref for Vcpu {
    type Target = VcpuFd;
    fn deref(&self) -> &VcpuFd {
        &self.fd
    }
}

impl DerefMut for Vcpu {
    fn deref_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }
}

/// Everything KVM holds about a vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest saw.
    pub cpuid: Vec<kvm_cpuid_entry2>,
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
/// refuses, which is skipped (logged) and the rest go on (a bulk
/// `KVM_SET_MSRS` stops at the first refusal on these hosts). Returns the
/// entries that went through.
fn msrs_batched(
    fd: &VcpuFd,
    entries: &[kvm_msr_entry],
    set: bool,
) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut done = Vec::with_capacity(entries.len());
    let mut i = 0;
    while i < entries.len() {
        let chunk = &entries[i..entries.len().min(i + MSR_BATCH)];
        let mut m = Msrs::from_entries(chunk)
            .map_err(|e| StateError::Invalid(format!("MSR batch: {e:?}")))?;
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

/// What restoring a vCPU needs: KVM, the new VM, the vCPU's id, and the
/// guest's TSC rate (one per guest, kept with its CPU description).
pub struct VcpuArgs<'a> {
    /// The KVM device.
    pub kvm: &'a Arc<Kvm>,
    /// The VM to create the vCPU in.
    pub vm: &'a VmFd,
    /// The vCPU's id.
    pub id: u64,
    /// The guest's TSC rate.
    pub tsc_khz: u32,
}

impl Persist for Vcpu {
    type State = VcpuState;
    type ConstructorArgs<'a> = VcpuArgs<'a>;
    type Error = StateError;

    fn save(&self) -> Result<VcpuState, StateError> {
        let wanted: Vec<kvm_msr_entry> = self
            .msr_index()?
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        Ok(VcpuState {
            cpuid: self.cpuid.clone(),
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

    fn restore(a: VcpuArgs<'_>, s: &VcpuState) -> Result<Vcpu, StateError> {
        let cpuid = CpuId::from_entries(&s.cpuid)
            .map_err(|e| StateError::Invalid(format!("saved CPUID does not fit: {e:?}")))?;
        let vcpu = Vcpu::create(a.kvm, a.vm, a.id, &cpuid)?;
        let host_khz = vcpu.get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))?;
        let want = a.tsc_khz;
        if host_khz != want {
            // KVM scales only up; and check it took (it may accept a value
            // it cannot then report).
            let tsc_err = |why: String| StateError::Tsc {
                saved: u64::from(want),
                host: u64::from(host_khz),
                why,
            };
            vcpu.set_tsc_khz(want).map_err(|e| tsc_err(e.to_string()))?;
            match vcpu.get_tsc_khz() {
                Ok(k) if k == want => {}
                Ok(k) => return Err(tsc_err(format!("it runs at {k} kHz instead"))),
                Err(e) => return Err(tsc_err(e.to_string())),
            }
        }
        vcpu.set_mp_state(s.mp_state)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
        vcpu.set_regs(&s.regs).map_err(kvm_err("KVM_SET_REGS"))?;
        vcpu.set_sregs(&s.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        // SAFETY: the buffer is a whole `kvm_xsave` KVM gave us for a vCPU
        // with the same CPUID (the compatibility check passed).
        unsafe { vcpu.set_xsave(&s.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&s.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
        let set = msrs_batched(&vcpu, &s.msrs, true)?;
        if s.tsc().is_some() && !set.iter().any(|m| m.index == MSR_IA32_TSC) {
            return Err(StateError::Invalid(
                "KVM refused to restore the guest TSC".into(),
            ));
        }
        vcpu.set_vcpu_events(&s.events)
            .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
        Ok(vcpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_round_trip() {
        let kvm = Arc::new(Kvm::new().expect("this test needs /dev/kvm"));
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = Vcpu::create(&kvm, &vm, 0, &cpuid).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rax = 0x1234_5678;
        regs.rip = 0x20_0000;
        regs.rflags = 0x202;
        vcpu.set_regs(&regs).unwrap();
        let bytes = postcard::to_stdvec(&vcpu.save().unwrap()).unwrap();
        let s: VcpuState = postcard::from_bytes(&bytes).unwrap();
        let vm2 = kvm.create_vm().unwrap();
        let args = VcpuArgs {
            kvm: &kvm,
            vm: &vm2,
            id: 0,
            tsc_khz: vcpu.get_tsc_khz().unwrap(),
        };
        let back = Vcpu::restore(args, &s).unwrap();
        let r = back.get_regs().unwrap();
        assert_eq!((r.rax, r.rip, r.rflags), (0x1234_5678, 0x20_0000, 0x202));
        assert_eq!(back.get_sregs().unwrap().cr0, vcpu.get_sregs().unwrap().cr0);
        assert!(s.tsc().is_some());
    }
}
