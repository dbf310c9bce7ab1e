//! Building a VM: the boot path, top to bottom.
//!
//! `Vm::create` runs in this order: validate the image (before KVM is
//! touched) → open KVM and create the VM → guest memory → vCPU and CPUID →
//! load the image, write page tables, descriptor tables, boot info and clock
//! page → registers. `Vm::run` (in `vcpu.rs`) then runs the guest.

use crate::bootinfo::{self, BootInfoError, BootParams};
use crate::config::VmConfig;
use crate::control::Control;
use crate::cpu;
use crate::devices::block::{self, BlockError};
use crate::devices::{self, Device, Devices};
use crate::exception;
use crate::heap::{Heap, INITIAL_HEAP};
use crate::kvm::{self, KvmError};
use crate::layout;
use crate::loader::{Image, LoadError};
use crate::memory::{GuestMem, MemError};
use crate::paging::{Access, PageTables, PagingError};
use crate::trace::BootTrace;
use crate::vcpu::Vcpu;
use duet_abi::boot::{RegionKind, BOOT_FLAG_TRACE};
use duet_abi::clock::ClockPage;
use duet_abi::identity::IdentityPage;
use duet_abi::PAGE_SIZE;
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Kvm, VmFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Smallest heap a guest gets.
pub const MIN_HEAP: u64 = 1 << 20;
const MSR_IA32_TSC: u32 = 0x10;

/// Why a VM could not be created.
#[derive(Debug, Error)]
pub enum VmError {
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
    /// KVM could not be opened.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed")]
    Ioctl {
        /// Which call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("cannot allocate guest memory: {0}")]
    Alloc(std::io::Error),
    /// A monitor-side write to guest memory failed.
    #[error("building the guest")]
    Mem(#[from] MemError),
    /// Page tables.
    #[error("building page tables")]
    Paging(#[from] PagingError),
    /// Boot info.
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
    /// A `--disk` cannot be attached.
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// A network device.
    #[error(transparent)]
    Net(#[from] devices::net::NetError),
}

pub(crate) fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Ioctl { what, source }
}

/// A created VM, ready to run.
pub struct Vm {
    /// Kept open for the VM's life.
    pub(crate) _kvm: Kvm,
    /// Kept open for the VM's life.
    pub(crate) _vm: VmFd,
    pub(crate) vcpu: Vcpu,
    pub(crate) mem: GuestMem,
    pub(crate) image: Image,
    pub(crate) devices: Devices,
    /// The page tables and their allocator (heap growth adds tables).
    pub(crate) pt: PageTables,
    pub(crate) heap: Heap,
    /// A host instant and the guest's monotonic ns at that instant: how the
    /// poll hypercall turns guest deadlines into host timeouts.
    pub(crate) clock_anchor: (Instant, u64),
    pub(crate) trace: Option<BootTrace>,
    pub(crate) exits: u64,
    /// The clock page as last written.
    pub(crate) clock: ClockPage,
    /// Restores so far (the identity page's generation).
    pub(crate) generation: u64,
    /// This guest's index among clones started together.
    pub(crate) clone_index: u32,
    /// The control block the API thread talks to the vCPU thread through.
    pub(crate) ctl: Arc<Control>,
    /// When the monitor started this guest (for `status` uptime).
    pub(crate) started: Instant,
    /// Template mode: snapshot into this directory at the guest's
    /// `snapshot_point()` and stop.
    pub(crate) snapshot_at_point: Option<PathBuf>,
    /// Paused by the control API.
    pub(crate) paused: bool,
    /// A `SIGTERM` asked the guest to shut down.
    pub(crate) shutdown_requested: bool,
    /// ... and its next poll has not yet been told (`READY_SHUTDOWN`).
    pub(crate) shutdown_unreported: bool,
    /// How long a guest asked to shut down may take before it is stopped.
    pub(crate) stop_timeout: std::time::Duration,
    /// GDB sessions and core files (reached through `debug::DebugVm`).
    pub(crate) debug: crate::debug::Debugger,
}

/// Registers `mem` as KVM memory slot 0 of `vm`.
pub(crate) fn register_memory(vm: &VmFd, mem: &GuestMem) -> Result<(), VmError> {
    // SAFETY: the region is our own mapping of `mem.size()` bytes. Both live
    // in `Vm`, whose fields drop in declaration order: the VM fd closes
    // before `mem` is unmapped.
    unsafe { vm.set_user_memory_region(mem.slot()) }.map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
}

impl Vm {
    /// Creates the VM described by `cfg`, ready for [`Vm::run`]. `ctl` is
    /// the control block the `--api` thread (if any) uses to reach it.
    pub fn create(
        cfg: &VmConfig,
        mut trace: Option<BootTrace>,
        ctl: Arc<Control>,
    ) -> Result<Vm, VmError> {
        let mark = |t: &mut Option<BootTrace>, p| {
            if let Some(t) = t {
                t.mark(p)
            }
        };
        // 1. The image, fully validated before KVM is touched.
        let path = cfg.image.display().to_string();
        let bytes = std::fs::read(&cfg.image).map_err(|source| VmError::ReadImage {
            path: path.clone(),
            source,
        })?;
        let image =
            Image::parse(bytes, cfg.mem).map_err(|source| VmError::Image { path, source })?;
        let need = image.end() + MIN_HEAP;
        if cfg.mem < need {
            return Err(VmError::MemTooSmall {
                mem: cfg.mem >> 20,
                need: need.div_ceil(1 << 20),
                end: image.end(),
            });
        }
        let mut devices = Devices::default();
        devices.list.extend(
            block::open_all(&cfg.disks, devices.list.len())?
                .into_iter()
                .map(Device::Block),
        );
        // Devices, also before KVM: a bad --disk or --net fails fast and clearly.
        let nets = devices::net::open_all(&cfg.net, devices.list.len())?;
        devices.list.extend(nets.into_iter().map(Device::Net));
        mark(&mut trace, "read + validate image, open devices");

        // 2. KVM and the VM. No in-kernel irqchip: nothing needs interrupts
        // and creating one costs milliseconds here.
        let kvm = kvm::open(&cfg.kvm_device)?;
        let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        mark(&mut trace, "open KVM + create VM");

        // 3. Memory.
        let mem = GuestMem::new(cfg.mem).map_err(VmError::Alloc)?;
        register_memory(&vm, &mem)?;
        mark(&mut trace, "guest memory");

        // 4. vCPU.
        let vcpu_fd = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
        let cpuid = crate::cpuid::setup(&kvm, &vcpu_fd)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID/KVM_SET_CPUID2"))?;
        let vcpu = Vcpu::new(&kvm, vcpu_fd, &cpuid)?;
        let tsc_khz = u64::from(vcpu.get_tsc_khz().map_err(ioctl("KVM_GET_TSC_KHZ"))?);
        mark(&mut trace, "vCPU + CPUID");

        // 5. Image, page tables, descriptor tables, boot info.
        let mut vm_ = Vm {
            _kvm: kvm,
            _vm: vm,
            vcpu,
            mem,
            image,
            devices,
            pt: PageTables::new(),
            heap: Heap::new(0, 0, 0, Vec::new()),
            clock_anchor: (Instant::now(), 0),
            trace,
            exits: 0,
            clock: ClockPage::default(),
            generation: 0,
            clone_index: 0,
            ctl,
            started: Instant::now(),
            snapshot_at_point: None,
            paused: false,
            shutdown_requested: false,
            shutdown_unreported: false,
            stop_timeout: crate::signals::DEFAULT_STOP_TIMEOUT,
            debug: Default::default(),
        };
        let boot_info = vm_.build_guest(cfg, tsc_khz)?;
        mark(&mut vm_.trace, "load image + tables");

        // 6. Registers: straight into 64-bit ring 3 at the entry point.
        let mut sregs = vm_.vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        cpu::setup_sregs(&mut sregs);
        vm_.vcpu.set_sregs(&sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        vm_.vcpu
            .set_regs(&cpu::initial_regs(vm_.image.entry, boot_info))
            .map_err(ioctl("KVM_SET_REGS"))?;
        vm_.start_clock(tsc_khz)?;
        vm_.write_identity()?;
        mark(&mut vm_.trace, "registers + clock");
        Ok(vm_)
    }

    fn build_guest(&mut self, cfg: &VmConfig, tsc_khz: u64) -> Result<u64, VmError> {
        let mem = &mut self.mem;
        let image = &self.image;
        image.load(mem)?;

        let pt = &mut self.pt;
        pt.map_4k(
            mem,
            layout::IDENTITY_PAGE,
            layout::IDENTITY_PAGE + PAGE_SIZE,
            Access::UserRead,
        )?;
        pt.map_4k(mem, layout::GDT, layout::IST_STACK_TOP, Access::Supervisor)?;
        exception::install(mem, pt)?;
        pt.map_4k(
            mem,
            layout::CLOCK_PAGE,
            layout::CLOCK_PAGE + PAGE_SIZE,
            Access::UserRead,
        )?;
        pt.map_4k(
            mem,
            layout::BOOT_INFO,
            layout::BOOT_INFO_END,
            Access::UserRead,
        )?;
        pt.map_4k(
            mem,
            layout::STACK_BOTTOM,
            layout::STACK_TOP,
            Access::UserWrite,
        )?;
        for s in &image.segments {
            let access = match (s.perms.write, s.perms.exec) {
                (_, true) => Access::UserExec,
                (true, false) => Access::UserWrite,
                (false, false) => Access::UserRead,
            };
            pt.map_4k(mem, s.start, s.end, access)?;
        }
        // The heap starts small and grows on request (MemGrow) up to the end
        // of guest memory.
        let heap_start = image.end();
        let heap_size = INITIAL_HEAP.min(cfg.mem - heap_start);
        pt.map_range(mem, heap_start, heap_start + heap_size, Access::UserWrite)?;
        cpu::write_tables(mem, &exception::gates())?;

        // What the guest may have the monitor write into on its behalf.
        let mut fixed = vec![(layout::STACK_BOTTOM, layout::STACK_TOP)];
        fixed.extend(
            image
                .segments
                .iter()
                .filter(|s| s.perms.write)
                .map(|s| (s.start, s.end)),
        );
        self.heap = Heap::new(heap_start, heap_size, cfg.mem, fixed);
        mem.set_writable(self.heap.writable_ranges());

        let regions = [
            (
                layout::GDT,
                layout::MONITOR_END - layout::GDT,
                RegionKind::Monitor,
            ),
            (layout::CLOCK_PAGE, PAGE_SIZE, RegionKind::Clock),
            (layout::IDENTITY_PAGE, PAGE_SIZE, RegionKind::Identity),
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
            flags: if self.trace.is_some() {
                BOOT_FLAG_TRACE
            } else {
                0
            },
            mem_size: cfg.mem,
            tsc_khz,
            regions: &regions,
            devices: &self.devices.infos(),
            heap: (heap_start, heap_size, cfg.mem - heap_start),
            args: &cfg.args,
            env: &cfg.env,
        };
        Ok(bootinfo::write(mem, &params)?)
    }

    /// Reads the guest's TSC together with the host clocks and publishes the
    /// clock page: monotonic time 0 at this instant, wall time from the host.
    fn start_clock(&mut self, tsc_khz: u64) -> Result<(), VmError> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_TSC,
            ..Default::default()
        }])
        .expect("one MSR fits");
        let now = Instant::now();
        self.clock_anchor = (now, 0);
        self.vcpu
            .get_msrs(&mut msrs)
            .map_err(ioctl("KVM_GET_MSRS"))?;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let tsc = msrs.as_slice()[0].data;
        if let Some(t) = &mut self.trace {
            t.anchor(now, tsc, tsc_khz);
        }
        let page = ClockPage {
            seq: 0,
            generation: 0,
            tsc_khz,
            mult: ClockPage::mult_for(tsc_khz),
            base_tsc: tsc,
            base_mono_ns: 0,
            base_wall_ns: wall,
        };
        bootinfo::write_clock(&self.mem, &page)?;
        self.clock = page;
        Ok(())
    }

    /// Publishes this guest's identity with a fresh random seed.
    pub(crate) fn write_identity(&mut self) -> Result<(), MemError> {
        let page = IdentityPage {
            seq: 0,
            clone_index: self.clone_index,
            generation: self.generation,
            seed: bootinfo::random_seed(),
            requests: 0,
        };
        bootinfo::write_identity(&self.mem, &page)
    }
}

impl Vm {
    /// Takes the boot trace, if tracing.
    pub fn take_trace(&mut self) -> Option<BootTrace> {
        self.trace.take()
    }

    /// Number of exits handled so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// Sets the grace period a guest gets after `SIGTERM` (`--stop-timeout`).
    pub fn set_stop_timeout(&mut self, d: std::time::Duration) {
        self.stop_timeout = d;
    }

    /// Template mode: at the guest's `snapshot_point()`, snapshot into `dir`
    /// and stop the guest.
    pub fn snapshot_at_point(&mut self, dir: PathBuf) {
        self.snapshot_at_point = Some(dir);
    }
}
