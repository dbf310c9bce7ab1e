//! The fuzzed guest's two disks: unlinked temporary files, device 0 on the
//! hypercall transport, device 1 a virtio disk served on the fuzzing thread.

use super::{DISK_BYTES, VIRTIO_DEV};
use crate::devices::block::{self, BlockDevice, DiskSpec};
use crate::devices::virtio::blk::BlkEngine;
use crate::devices::virtio::{slot_of, transport, VirtioDevice};
use crate::devices::{Devices, Transport};
use crate::memory::GuestMem;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Runs `f` on disk `i`'s file: opened once per thread (each thread has
/// its own guest), unlinked already; devices reopen it by its
/// `/proc/self/fd` path on every run.
fn with_disk<R>(i: usize, f: impl FnOnce(&std::fs::File) -> R) -> R {
    thread_local! {
        static FILES: [(std::fs::File, (u64, u64)); 2] = [0, 1].map(|_| {
            let f = tempfile::tempfile().expect("a temporary file for the fuzzed disks");
            f.set_len(DISK_BYTES).expect("sizing a fuzzed disk");
            let id = identity(&f).expect("a fuzzed disk's inode");
            (f, id)
        });
    }
    FILES.with(|files| {
        let (file, id) = &files[i];
        // The devices reach the file by its descriptor's number: code that
        // closed a descriptor it did not own would point that number at
        // another file. Say so, rather than a confusing open or lock error.
        if identity(file).ok() != Some(*id) {
            panic!(
                "fd {} no longer holds fuzzed disk {i}: the code under test closed a descriptor it did not own",
                file.as_raw_fd()
            );
        }
        f(file)
    })
}

/// A file's (device, inode).
fn identity(f: &std::fs::File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().map(|m| (m.dev(), m.ino()))
}

fn disk(i: usize) -> DiskSpec {
    DiskSpec {
        path: format!("/proc/self/fd/{}", with_disk(i, |f| f.as_raw_fd())).into(),
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
    for i in 0..2 {
        with_disk(i, |f| f.set_len(0).and_then(|()| f.set_len(DISK_BYTES)))
            .expect("emptying a fuzzed disk");
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
