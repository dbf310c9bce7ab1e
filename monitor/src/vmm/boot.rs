//! Building a guest from an image: the boot path, top to bottom.
//!
//! The image and the devices are checked before KVM is touched; then guest
//! memory, the VM, the vCPU (CPUID), the guest's structures (image, page
//! tables, descriptor tables and exception stubs, boot info), the
//! registers, the clock and the identity.

use super::{guest, Control, Life, Vmm};
use crate::bootinfo::{self, BootInfoError, BootParams};
use crate::clock::GuestClock;
use crate::config::VmConfig;
use crate::cpu::tables;
use crate::devices::{DeviceOpenError, Devices};
use crate::heap::{Heap, INITIAL_HEAP};
use crate::identity::Identity;
use crate::layout;
use crate::loader::{Image, LoadError};
use crate::memory::{GuestMem, MemError};
use crate::paging::{PageTables, PagingError};
use crate::persist::StateError;
use crate::trace::BootTrace;
use crate::vm::{Vm, VmError};
use duet_abi::boot::{RegionKind, BOOT_FLAG_TRACE};
use duet_abi::PAGE_SIZE;
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;

/// Smallest heap a guest gets.
pub const MIN_HEAP: u64 = 1 << 20;

/// Why a guest could not be built.
#[derive(Debug, Error)]
pub enum BootError {
    /// Reading the image file failed.
    #[error("cannot read image {path}")]
    ReadImage {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The image is invalid.
    #[error("bad image {path}")]
    Image {
        /// The path.
        path: String,
        /// Why.
        source: LoadError,
    },
    /// Memory too small for this image.
    #[error("--mem {mem} MiB is too small for this image: it needs at least {need} MiB (image ends at {end:#x}, plus 1 MiB of heap)")]
    MemTooSmall {
        /// Requested MiB.
        mem: u64,
        /// Needed MiB.
        need: u64,
        /// Image end.
        end: u64,
    },
    /// A `--disk` or `--net` cannot be attached.
    #[error(transparent)]
    Devices(#[from] DeviceOpenError),
    /// A device's I/O thread could not start.
    #[error(transparent)]
    DeviceStart(#[from] crate::devices::DeviceError),
    /// Guest memory could not be mapped.
    #[error("cannot allocate guest memory: {0}")]
    Alloc(std::io::Error),
    /// KVM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU operation.
    #[error(transparent)]
    State(#[from] StateError),
    /// A monitor-side write to guest memory failed.
    #[error("building the guest")]
    Mem(#[from] MemError),
    /// Page tables.
    #[error("building page tables")]
    Paging(#[from] PagingError),
    /// Boot info.
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
}

fn mark(t: &mut Option<BootTrace>, phase: &'static str) {
    if let Some(t) = t {
        t.mark(phase)
    }
}

impl Vmm {
    /// Builds the guest `cfg` describes, ready for [`Vmm::run`]. `ctl` is
    /// the control block other threads reach it through.
    pub fn create(
        cfg: &VmConfig,
        mut trace: Option<BootTrace>,
        ctl: Arc<Control>,
    ) -> Result<Vmm, BootError> {
        // 1. The image and the devices, fully checked before KVM is touched:
        // a bad image, --disk or --net fails fast and clearly.
        let path = cfg.image.display().to_string();
        let bytes = std::fs::read(&cfg.image).map_err(|source| BootError::ReadImage {
            path: path.clone(),
            source,
        })?;
        let image =
            Image::parse(bytes, cfg.mem).map_err(|source| BootError::Image { path, source })?;
        let need = image.end() + MIN_HEAP;
        if cfg.mem < need {
            return Err(BootError::MemTooSmall {
                mem: cfg.mem >> 20,
                need: need.div_ceil(1 << 20),
                end: image.end(),
            });
        }
        let mut devices = Devices::open(&cfg.disks, &cfg.net)?;
        mark(&mut trace, "read + validate image, open devices");

        // 2. Memory, then KVM and the VM with the memory as slot 0.
        let mem = GuestMem::new(cfg.mem).map_err(BootError::Alloc)?;
        mark(&mut trace, "guest memory");
        let mut vm = Vm::new(&cfg.kvm_device, mem)?;
        mark(&mut trace, "open KVM + create VM");

        // 3. The vCPU.
        let vcpu = vm.create_vcpu(0)?;
        let tsc_khz = u64::from(
            vcpu.get_tsc_khz()
                .map_err(crate::persist::kvm_err("KVM_GET_TSC_KHZ"))?,
        );
        mark(&mut trace, "vCPU + CPUID");

        // 4. Image, page tables, descriptor tables, boot info.
        let (heap, pt, boot_info) = lay_out(
            vm.mem_mut(),
            &image,
            cfg,
            &devices,
            trace.is_some(),
            tsc_khz,
        )?;
        mark(&mut trace, "load image + tables");

        // 5. Registers: straight into 64-bit ring 3 at the entry point.
        let mut sregs = vcpu
            .get_sregs()
            .map_err(crate::persist::kvm_err("KVM_GET_SREGS"))?;
        tables::setup_sregs(&mut sregs);
        vcpu.set_sregs(&sregs)
            .map_err(crate::persist::kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&tables::initial_regs(image.entry, boot_info))
            .map_err(crate::persist::kvm_err("KVM_SET_REGS"))?;
        // The clock: the guest TSC now, beside the host's clocks.
        let now = Instant::now();
        let tsc = vcpu.tsc()?;
        if let Some(t) = &mut trace {
            t.anchor(now, tsc, tsc_khz);
        }
        let clock = GuestClock::start(vm.mem(), tsc_khz, tsc, now)?;
        let identity = Identity::default();
        identity.publish(vm.mem())?;
        vm.start_devices(&mut devices)?;
        mark(&mut trace, "registers + clock");
        Ok(Vmm {
            vcpus: vec![vcpu],
            devices,
            image,
            pt,
            heap,
            clock,
            identity,
            exits: 0,
            started: Instant::now(),
            ctl,
            trace,
            life: Life::new(),
            debugger: None,
            vm,
        })
    }
}

/// Writes the guest's structures into `mem`: the image's segments, the
/// page tables for everything the guest may touch, the descriptor tables
/// with the exception stubs, and the boot info. Returns the heap, the page
/// tables and the boot info's address.
fn lay_out(
    mem: &mut GuestMem,
    image: &Image,
    cfg: &VmConfig,
    devices: &Devices,
    trace: bool,
    tsc_khz: u64,
) -> Result<(Heap, PageTables, u64), BootError> {
    image.load(mem)?;
    // The heap starts small and grows on request (MemGrow) up to the end
    // of guest memory.
    let heap_start = image.end();
    let heap_size = INITIAL_HEAP.min(cfg.mem - heap_start);
    // What the guest may have the monitor write into on its behalf.
    let heap = Heap::new(heap_start, heap_size, cfg.mem, guest::fixed_writable(image));
    let pt = guest::map(mem, image, &heap)?;
    guest::write_privileged(mem)?;
    mem.set_writable(heap.writable_ranges());

    let regions = [
        (
            layout::GDT,
            layout::MONITOR_END - layout::GDT,
            RegionKind::Monitor,
        ),
        (layout::CLOCK_PAGE, PAGE_SIZE, RegionKind::Clock),
        (layout::IDENTITY_PAGE, PAGE_SIZE, RegionKind::Identity),
        (layout::VIRTIO_PAGE, PAGE_SIZE, RegionKind::Virtio),
        (
            layout::BOOT_INFO,
            layout::BOOT_INFO_END - layout::BOOT_INFO,
            RegionKind::BootInfo,
        ),
        (
            layout::PAGE_TABLES,
            layout::PAGE_TABLES_END - layout::PAGE_TABLES,
            RegionKind::Monitor,
        ),
        (
            layout::STACK_BOTTOM,
            layout::STACK_TOP - layout::STACK_BOTTOM,
            RegionKind::Stack,
        ),
        (
            image.start(),
            image.end() - image.start(),
            RegionKind::Image,
        ),
        (heap_start, heap_size, RegionKind::Heap),
    ];
    let params = BootParams {
        flags: if trace { BOOT_FLAG_TRACE } else { 0 },
        mem_size: cfg.mem,
        tsc_khz,
        regions: &regions,
        devices: &devices.infos(),
        heap: (heap_start, heap_size, cfg.mem - heap_start),
        args: &cfg.args,
        env: &cfg.env,
    };
    Ok((heap, pt, bootinfo::write(mem, &params)?))
}
