//! The fuzzed guest's two disks: unlinked temporary files, device 0 on the
//! hypercall transport, device 1 a virtio disk served on the fuzzing thread.

use super::{DISK_BYTES, VIRTIO_DEV};
use crate::devices::block::{self, BlockDevice, DiskSpec};
use crate::devices::virtio::blk::BlkEngine;
use crate::devices::virtio::{slot_of, transport, VirtioDevice};
use crate::devices::{Devices, Transport};
use crate::memory::GuestMem;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

/// The two disks' files, opened once per process and unlinked already;
/// devices reopen them by their `/proc/self/fd` path on every run.
fn disk_files() -> &'static [std::fs::File; 2] {
    static FILES: OnceLock<[std::fs::File; 2]> = OnceLock::new();
    FILES.get_or_init(|| {
        [0, 1].map(|_| {
            let f = tempfile::tempfile().expect("a temporary file for the fuzzed disks");
            f.set_len(DISK_BYTES).expect("sizing a fuzzed disk");
            f
        })
    })
}

fn disk(i: usize) -> DiskSpec {
    DiskSpec {
        path: format!("/proc/self/fd/{}", disk_files()[i].as_raw_fd()).into(),
        readonly: false,
        name: None,
        sector_size: 512,
        transport: Transport::Hypercall,
    }
}

/// The two disks: device 0 on the hypercall transport, device 1 virtio
/// (attached to `mem` as its start would, without its thread).
pub(super) fn devices(mem: &GuestMem) -> (Devices, VirtioDevice<BlkEngine>) {
    // Zeroed again: what one run wrote must not reach the next.
    for f in disk_files() {
        f.set_len(0).expect("emptying a fuzzed disk");
        f.set_len(DISK_BYTES).expect("sizing a fuzzed disk");
    }
    let devices = Devices::open(&[disk(0)], &[]).expect("opening the hypercall disk");
    let dev: BlockDevice = block::open_all(&[disk(1)], VIRTIO_DEV as usize)
        .expect("opening the virtio disk")
        .remove(0);
    let virtio = VirtioDevice::new(VIRTIO_DEV as usize, BlkEngine::new(Arc::new(dev)), None)
        .expect("a virtio disk");
    {
        let mut c = virtio.shared().lock();
        c.mem = Some(mem.io_mem());
        transport::publish(mem, slot_of(VIRTIO_DEV as usize), &c.engine)
            .expect("publishing the virtio slot");
        virtio.shared().publish(&c);
    }
    (devices, virtio)
}
