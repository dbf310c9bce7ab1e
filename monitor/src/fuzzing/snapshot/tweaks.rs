//! Changes to the good [`sample`] state: random states rarely pass the
//! state check, so what lies behind it (page tables, the clock, virtio
//! queue records) would go unfuzzed without a good state to start from.

use super::spec::{sample, Device, Spec};
use crate::fuzzing::gen::Len;
use arbitrary::Arbitrary;
use duet_abi::PAGE_SIZE;

/// A virtio queue's record with its rings on heap pages: size, the pages
/// of the descriptor table, avail and used rings, the next entries.
pub type PageQueue = (u16, u8, u8, u8, u16, u16);

/// Changes to the [`sample`] state.
#[derive(Arbitrary, Clone, Debug)]
pub struct Tweaks {
    /// Heap end and limit, in pages past its start.
    pub heap: Option<(u16, u16)>,
    /// Protected heap ranges: first page, pages, read-only.
    pub protect: Vec<(u16, u8, bool)>,
    /// The clock page's generation, scale, base TSC and base time.
    pub clock: Option<(u32, Option<u64>, u64, u64)>,
    /// The vCPU's TSC (`None`: none saved).
    pub tsc: Option<Option<u64>>,
    /// Virtio disks: status, and per queue its size, the heap pages of its
    /// rings and its next entries.
    pub virtio: Vec<(u32, Vec<PageQueue>)>,
    /// Other devices.
    pub devices: Vec<Device>,
}

impl Tweaks {
    /// The state described.
    pub fn spec(&self) -> Spec {
        let mut s = sample(None);
        let start = duet_abi::boot::IMAGE_BASE + 0x2000;
        let page = |p: u64| Len::Raw(start + p * PAGE_SIZE);
        if let Some((end, limit)) = self.heap {
            s.heap.end = page(end.into());
            s.heap.limit = page(limit.into());
        }
        s.heap.no_write = self
            .protect
            .iter()
            .take(64)
            .map(|&(p, n, r)| (page(p.into()), page(u64::from(p) + u64::from(n)), r))
            .collect();
        s.heap.no_write.sort_by_key(|r| r.0.get());
        if let Some(c) = self.clock {
            s.clock = c;
        }
        if let Some(t) = self.tsc {
            s.vcpus = vec![t];
        }
        let version_1 = duet_abi::virtio::VIRTIO_F_VERSION_1;
        s.devices = self
            .virtio
            .iter()
            .take(8)
            .map(|(status, q)| {
                let q = q
                    .iter()
                    .map(|&(size, d, a, u, na, nu)| {
                        let at = |p: u8| page(p.into());
                        (size, at(d), at(a), at(u), na, nu)
                    })
                    .collect();
                Device::Disk(1 << 20, Some((version_1, *status, q)))
            })
            .chain(self.devices.iter().take(8).cloned())
            .collect();
        s
    }
}
