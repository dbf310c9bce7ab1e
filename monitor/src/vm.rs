//! The KVM side of a guest: the KVM device, the VM fd, guest memory
//! registered as memory slot 0, and dirty-page logging.
//!
//! What runs in the VM (vCPUs, devices, tables) belongs to the `Vmm`
//! (`vmm/`); this is the part every VM has, whatever runs in it.

use crate::cpu::cpuid;
use crate::cpu::vcpu::{Vcpu, VcpuArgs};
use crate::kvm::{self, KvmError};
use crate::memory::GuestMem;
use crate::persist::{kvm_err, Persist, StateError};
use kvm_bindings::{kvm_clock_data, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VmFd};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// Why a VM could not be set up.
#[derive(Debug, Error)]
pub enum VmError {
    /// KVM could not be opened.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// Which call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// A VM with its guest memory.
pub struct Vm {
    /// Declared before `mem`: the VM fd closes before the memory it maps
    /// is unmapped.
    fd: VmFd,
    kvm: Arc<Kvm>,
    mem: GuestMem,
    dirty_logging: bool,
}

/// A duplicate of the VM fd for another thread (a migration's sender),
/// which reads the dirty log through it.
pub struct DirtyLog {
    fd: VmFd,
    size: u64,
}

impl DirtyLog {
    /// Pages written by the guest since the last call (`KVM_GET_DIRTY_LOG`).
    pub fn take(&self) -> Result<Vec<u64>, String> {
        self.fd
            .get_dirty_log(0, self.size as usize)
            .map_err(|e| format!("KVM_GET_DIRTY_LOG failed: {e}"))
    }
}

impl Vm {
    /// Opens KVM (`kvm_device`), creates a VM and registers `mem` as its
    /// memory slot 0. No in-kernel irqchip: nothing needs interrupts and
    /// creating one costs milliseconds here.
    pub fn new(kvm_device: &Path, mem: GuestMem) -> Result<Vm, VmError> {
        Self::with_kvm(Arc::new(kvm::open(kvm_device)?), mem)
    }

    /// [`Vm::new`] with KVM already open.
    pub fn with_kvm(kvm: Arc<Kvm>, mem: GuestMem) -> Result<Vm, VmError> {
        let fd = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        let vm = Vm {
            fd,
            kvm,
            mem,
            dirty_logging: false,
        };
        vm.register(0)
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
        Ok(vm)
    }

    fn register(&self, flags: u32) -> Result<(), kvm_ioctls::Error> {
        // SAFETY: the region is our own mapping of `mem.size()` bytes, which
        // outlives the VM fd (field order in `Vm`).
        unsafe { self.fd.set_user_memory_region(self.mem.slot(flags)) }
    }

    /// The KVM device.
    pub fn kvm(&self) -> &Arc<Kvm> {
        &self.kvm
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// Guest memory, to change its bookkeeping (writable ranges, released
    /// pages).
    pub fn mem_mut(&mut self) -> &mut GuestMem {
        &mut self.mem
    }

    /// Creates vCPU `id` with the CPUID KVM supports (cached per host boot:
    /// [`cpuid::setup`]).
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu, VmError> {
        let fd = self.fd.create_vcpu(id).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let cpuid = cpuid::setup(&self.kvm, &fd)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID/KVM_SET_CPUID2"))?;
        Ok(Vcpu::new(&self.kvm, fd, &cpuid))
    }

    /// Recreates vCPU `id` from its saved state, its TSC at `tsc_khz`.
    pub fn restore_vcpu(
        &self,
        id: u64,
        tsc_khz: u32,
        s: &crate::cpu::vcpu::VcpuState,
    ) -> Result<Vcpu, StateError> {
        let args = VcpuArgs {
            kvm: &self.kvm,
            vm: &self.fd,
            id,
            tsc_khz,
        };
        Vcpu::restore(args, s)
    }

    /// Turns dirty-page logging on or off (a migration's pre-copy), with
    /// the monitor's own writes tracked alongside.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), String> {
        self.register(if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 })
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION (dirty log {on}) failed: {e}"))?;
        self.dirty_logging = on;
        self.mem.host_dirty().set(on);
        Ok(())
    }

    /// A handle on the dirty log for another thread.
    pub fn dirty_log(&self) -> Result<DirtyLog, String> {
        // SAFETY: dup of our own open VM fd; the new fd is owned below.
        let fd = unsafe { libc::dup(self.fd.as_raw_fd()) };
        if fd < 0 {
            return Err(format!(
                "cannot duplicate the VM fd: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a fresh duplicate of a KVM VM fd, owned by nobody else.
        let fd = unsafe { self.kvm.create_vmfd_from_rawfd(fd) }
            .map_err(|e| format!("cannot wrap the VM fd: {e}"))?;
        Ok(DirtyLog {
            fd,
            size: self.mem.size(),
        })
    }

    /// Starts the devices' own threads over this VM's memory, with their
    /// doorbells as ioeventfds on this VM.
    pub fn start_devices(
        &self,
        devices: &mut crate::devices::Devices,
    ) -> Result<(), crate::devices::DeviceError> {
        let ioeventfd = |port: u16, fd: &vmm_sys_util::eventfd::EventFd| {
            self.fd
                .register_ioevent(
                    fd,
                    &kvm_ioctls::IoEventAddress::Pio(u64::from(port)),
                    kvm_ioctls::NoDatamatch,
                )
                .map_err(|e| std::io::Error::other(format!("KVM_IOEVENTFD on port {port:#x}: {e}")))
        };
        devices.start(&crate::devices::virtio::StartCtx {
            mem: &self.mem,
            ioeventfd: &ioeventfd,
        })
    }

    /// The KVM clock (saved with the guest).
    pub fn clock(&self) -> Result<kvm_clock_data, StateError> {
        self.fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))
    }

    /// Sets the KVM clock from a saved one.
    pub fn set_clock(&self, c: &kvm_clock_data) -> Result<(), StateError> {
        let mut c = *c;
        c.flags = 0;
        self.fd.set_clock(&c).map_err(kvm_err("KVM_SET_CLOCK"))
    }
}
