//! A guest's state described by the fuzzer (and a good sample of one), and
//! the state file's sections built from it as a monitor would save them.

use crate::clock::ClockState;
use crate::cpu::vcpu::{VcpuState, MSR_IA32_TSC};
use crate::devices::block::{BlockState, DiskSpec};
use crate::devices::net::NetConfig;
use crate::devices::virtio::{QueueRecord, VirtioState};
use crate::devices::{DeviceState, Transport};
use crate::fuzzing::elf::{Body, ElfSpec, ElfType, Header as ImageHeader, Seg, Vaddr};
use crate::fuzzing::gen::Len;
use crate::heap::Prot;
use crate::identity::Identity;
use crate::memory::MemState;
use crate::snapshot::memfile::{MemIndex, MemRange};
use crate::statefile::{Header, StateFile, Tag, FORMAT_VERSION};
use crate::vmm::guest;
use arbitrary::Arbitrary;
use duet_abi::PAGE_SIZE;
use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry};
use serde::Serialize;

/// The heap as its state holds it (the field order of `heap::Heap`).
#[derive(Arbitrary, Clone, Debug)]
pub struct HeapRecord {
    /// First heap byte.
    pub start: Len,
    /// End of the mapped heap.
    pub end: Len,
    /// Largest end.
    pub limit: Len,
    /// Protected ranges (read-only when true).
    pub no_write: Vec<(Len, Len, bool)>,
    /// The other writable ranges (unless `Spec::fixed_as_booted`).
    pub fixed_writable: Vec<(Len, Len)>,
}

#[derive(Serialize)]
struct HeapOut {
    start: u64,
    end: u64,
    limit: u64,
    no_write: Vec<(u64, u64, Prot)>,
    fixed_writable: Vec<(u64, u64)>,
}

#[derive(Serialize)]
struct MonitorOut {
    exits: u64,
    heap: HeapOut,
    identity: Identity,
}

/// A virtio queue's record: size, rings, next entries.
pub type Queue = (u16, Len, Len, Len, u16, u16);

/// A device record.
#[derive(Arbitrary, Clone, Debug)]
pub enum Device {
    /// A disk (virtio when features, status and queues are given).
    Disk(u64, Option<(u64, u32, Vec<Queue>)>),
    /// A NIC.
    Nic(String, Option<[u8; 6]>),
}

/// A guest's state, fuzzer-described.
#[derive(Arbitrary, Clone, Debug)]
pub struct Spec {
    /// Memory size: MiB, or any number of bytes.
    pub mem: Result<u8, u64>,
    /// The memory state's writable ranges.
    pub writable: Vec<(Len, Len)>,
    /// The heap.
    pub heap: HeapRecord,
    /// `Ok`: the stack and the image's data, as a monitor saves them.
    pub fixed_as_booted: bool,
    /// The image.
    pub image: ElfSpec,
    /// vCPUs, each maybe with a TSC.
    pub vcpus: Vec<Option<u64>>,
    /// The header's CPU agrees with the vCPUs'.
    pub same_cpu: bool,
    /// TSC kHz.
    pub tsc_khz: u64,
    /// The clock page's fields (the scale right when `None`).
    pub clock: (u32, Option<u64>, u64, u64),
    /// Identity.
    pub identity: (u64, u32),
    /// Devices.
    pub devices: Vec<Device>,
    /// Memory index runs: (page, pages, file page).
    pub index: Vec<(u32, Len, u64)>,
}

/// A good image: text at the image base, data on the next page.
pub fn sample_image() -> ElfSpec {
    let seg = |flags, page| Seg {
        load: true,
        ptype: 0,
        flags,
        vaddr: Vaddr::Page(page, 0),
        extra: None,
        body: Body::Bytes(64),
    };
    ElfSpec {
        etype: ElfType::Exec,
        machine: None,
        entry: Ok((0, 0)),
        segs: vec![seg(5, 0), seg(6, 1)],
        header: ImageHeader {
            present: true,
            magic: true,
            version: None,
            size: None,
            offset: None,
        },
        syms: vec![],
        patches: vec![],
    }
}

/// A good 8 MiB guest's state (for tests and seeds); the heap's other writable ranges are
/// `fixed`, or the stack and the data segment as a boot makes them.
pub fn sample(fixed: Option<&[(u64, u64)]>) -> Spec {
    let start = duet_abi::boot::IMAGE_BASE + 0x2000;
    Spec {
        mem: Ok(8),
        writable: vec![],
        heap: HeapRecord {
            start: Len::Raw(start),
            end: Len::Raw(start + 0x10000),
            limit: Len::Raw(8 << 20),
            no_write: vec![],
            fixed_writable: fixed
                .unwrap_or_default()
                .iter()
                .map(|&(s, e)| (Len::Raw(s), Len::Raw(e)))
                .collect(),
        },
        fixed_as_booted: fixed.is_none(),
        image: sample_image(),
        vcpus: vec![Some(1000)],
        same_cpu: true,
        tsc_khz: 2_000_000,
        clock: (0, None, 0, 0),
        identity: (0, 0),
        devices: vec![],
        index: vec![],
    }
}

/// The CPU a described vCPU reports (vendor, features), as a source's
/// Hello names it.
pub fn sample_cpu() -> ([u8; 12], [u32; 6]) {
    crate::compat::signature(&vcpu(None).cpuid)
}

fn vcpu(tsc: Option<u64>) -> VcpuState {
    let leaf = |function, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    VcpuState {
        cpuid: vec![
            leaf(0, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            leaf(1, 0, 1, 2),
        ],
        regs: Default::default(),
        sregs: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        msrs: tsc
            .map(|data| kvm_msr_entry {
                index: MSR_IA32_TSC,
                data,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        events: Default::default(),
        mp_state: Default::default(),
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

impl Spec {
    /// The state file's sections.
    pub fn sections(&self) -> StateFile {
        let size = match self.mem {
            Ok(mib) => u64::from(mib.max(4)) << 20,
            Err(n) => n,
        };
        let image = self.image.build();
        let fixed = if self.fixed_as_booted {
            // What the boot path saves, if the image parses.
            match crate::loader::Image::parse(image.clone(), size) {
                Ok(i) => guest::fixed_writable(&i),
                Err(_) => Vec::new(),
            }
        } else {
            self.heap
                .fixed_writable
                .iter()
                .map(|(s, e)| (s.get(), e.get()))
                .collect()
        };
        let h = &self.heap;
        let heap = HeapOut {
            start: h.start.get(),
            end: h.end.get(),
            limit: h.limit.get(),
            no_write: h
                .no_write
                .iter()
                .map(|(s, e, r)| (s.get(), e.get(), if *r { Prot::Read } else { Prot::None }))
                .collect(),
            fixed_writable: fixed,
        };
        let vcpus: Vec<VcpuState> = self.vcpus.iter().take(3).map(|t| vcpu(*t)).collect();
        let (vendor, features) = match (self.same_cpu, vcpus.first()) {
            (true, Some(v)) => crate::compat::signature(&v.cpuid),
            _ => (*b"GenuineIntel", [1; 6]),
        };
        let (generation, mult, base_tsc, base_mono_ns) = self.clock;
        let clock = ClockState {
            generation,
            tsc_khz: self.tsc_khz,
            mult: mult.unwrap_or(duet_abi::clock::ClockPage::mult_for(self.tsc_khz)),
            base_tsc,
            base_mono_ns,
            base_wall_ns: 0,
        };
        let devices: Vec<DeviceState> = self.devices.iter().take(20).map(device).collect();
        let memory = MemState {
            size,
            writable: self
                .writable
                .iter()
                .map(|(s, e)| (s.get(), e.get()))
                .collect(),
        };
        let index = MemIndex {
            size,
            ranges: self
                .index
                .iter()
                .map(|(p, n, f)| MemRange {
                    gpa: u64::from(*p) * PAGE_SIZE,
                    pages: n.get(),
                    file_page: *f,
                    crc: 0,
                })
                .collect(),
        };
        let mut sections: Vec<(u32, Vec<u8>)> =
            vcpus.iter().map(|v| (Tag::Vcpu as u32, enc(v))).collect();
        let monitor = MonitorOut {
            exits: 0,
            heap,
            identity: Identity {
                generation: self.identity.0,
                clone_index: self.identity.1,
            },
        };
        sections.extend([
            (
                Tag::KvmClock as u32,
                enc(&kvm_bindings::kvm_clock_data::default()),
            ),
            (Tag::Clock as u32, enc(&clock)),
            (Tag::Monitor as u32, enc(&monitor)),
            (Tag::Image as u32, image),
            (Tag::Devices as u32, enc(&devices)),
            (Tag::Memory as u32, enc(&memory)),
            (Tag::MemoryIndex as u32, enc(&index)),
        ]);
        StateFile {
            header: Header {
                format_version: FORMAT_VERSION,
                abi_version: duet_abi::ABI_VERSION,
                vendor,
                features,
                tsc_khz: self.tsc_khz,
                snapshot_id: 7,
            },
            sections,
        }
    }
}

fn device(d: &Device) -> DeviceState {
    match d {
        Device::Disk(capacity, q) => {
            let b = BlockState {
                spec: DiskSpec {
                    path: "/nonexistent/fuzz.img".into(),
                    readonly: false,
                    name: None,
                    sector_size: 512,
                    transport: Transport::Virtio,
                },
                capacity: *capacity,
            };
            match q {
                None => DeviceState::Block(b),
                Some((features, status, queues)) => {
                    DeviceState::VirtioBlock(b, virtio(*features, *status, queues))
                }
            }
        }
        Device::Nic(tap, mac) => DeviceState::Net(NetConfig {
            tap: tap.clone(),
            mac: *mac,
            transport: Transport::Hypercall,
        }),
    }
}

fn virtio(features: u64, status: u32, q: &[Queue]) -> VirtioState {
    VirtioState {
        features,
        status,
        queues: q
            .iter()
            .take(3)
            .map(
                |&(size, desc, avail, used, next_avail, next_used)| QueueRecord {
                    size,
                    desc: desc.get(),
                    avail: avail.get(),
                    used: used.get(),
                    next_avail,
                    next_used,
                },
            )
            .collect(),
    }
}
