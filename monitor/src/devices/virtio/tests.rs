//! Hostile queues against the checks, on real guest memory: every refusal
//! costs only the request (or the queue), never the monitor.

use super::blk::BlkEngine;
use super::chain::{pop, ChainError, QueueError};
use super::core::Engine;
use super::transport::{restore_queues, QueueRecord, TransportState};
use crate::devices::block::{open_all, parse_spec};
use crate::memory::{GuestMem, IoMem};
use duet_abi::Gpa;
use std::sync::Arc;
use virtio_queue::Queue;

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const SIZE: u16 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

fn mem() -> GuestMem {
    let mut m = GuestMem::new(4 << 20).unwrap();
    // Everything below 3 MiB is guest-writable; the top MiB is not.
    m.set_writable(vec![(0, 3 << 20)]);
    m
}

fn desc(m: &GuestMem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    m.write_bytes(Gpa(table + 16 * u64::from(i)), &b).unwrap();
}

/// Makes heads `heads` available (avail index = their count).
fn offer(m: &GuestMem, heads: &[u16]) {
    for (i, h) in heads.iter().enumerate() {
        m.write_bytes(Gpa(AVAIL + 4 + 2 * i as u64), &h.to_le_bytes())
            .unwrap();
    }
    m.write_bytes(Gpa(AVAIL + 2), &(heads.len() as u16).to_le_bytes())
        .unwrap();
}

fn queue(io: &IoMem) -> Queue {
    let st = TransportState {
        features: duet_abi::virtio::VIRTIO_F_VERSION_1,
        status: 0,
        queues: vec![QueueRecord {
            size: SIZE,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            next_avail: 0,
            next_used: 0,
        }],
    };
    restore_queues(&st, 1, io).unwrap().pop().unwrap()
}

fn first(m: &GuestMem) -> Result<Option<Result<super::chain::Chain, ChainError>>, QueueError> {
    let io = m.io_mem();
    let mut q = queue(&io);
    pop(&mut q, &io, &io.writable()).map(|o| o.map(|(_, c)| c))
}

#[test]
fn a_good_chain_passes_and_bad_ones_fail_alone() {
    let m = mem();
    // Header, data, status: fine.
    desc(&m, DESC, 0, 0x10000, 16, F_NEXT, 1);
    desc(&m, DESC, 1, 0x11000, 512, F_NEXT | F_WRITE, 2);
    desc(&m, DESC, 2, 0x12000, 1, F_WRITE, 0);
    offer(&m, &[0]);
    let c = first(&m).unwrap().unwrap().unwrap();
    assert_eq!((c.readable_len(), c.writable_len()), (16, 513));

    // A buffer past the end of guest memory.
    desc(&m, DESC, 1, (4 << 20) - 8, 512, F_NEXT | F_WRITE, 2);
    assert!(matches!(
        first(&m).unwrap().unwrap(),
        Err(ChainError::OutOfMemory(..))
    ));
    // A length that overflows the address space.
    desc(&m, DESC, 1, u64::MAX - 4, 512, F_NEXT | F_WRITE, 2);
    assert!(matches!(
        first(&m).unwrap().unwrap(),
        Err(ChainError::OutOfMemory(..))
    ));
    // A device-writable buffer in memory the guest may not have written.
    desc(&m, DESC, 1, 3 << 20, 512, F_NEXT | F_WRITE, 2);
    assert!(matches!(
        first(&m).unwrap().unwrap(),
        Err(ChainError::NotWritable(..))
    ));
    // Readable after writable.
    desc(&m, DESC, 1, 0x11000, 512, F_NEXT | F_WRITE, 2);
    desc(&m, DESC, 2, 0x12000, 1, 0, 0);
    assert_eq!(
        first(&m).unwrap().unwrap().unwrap_err(),
        ChainError::WrongDirection
    );
    // A loop: 2 -> 1 -> 2 ...
    desc(&m, DESC, 2, 0x12000, 1, F_WRITE | F_NEXT, 1);
    assert_eq!(
        first(&m).unwrap().unwrap().unwrap_err(),
        ChainError::Unterminated
    );
    // `next` beyond the table.
    desc(&m, DESC, 2, 0x12000, 1, F_WRITE | F_NEXT, 40);
    assert_eq!(
        first(&m).unwrap().unwrap().unwrap_err(),
        ChainError::Unterminated
    );
    // Too long: an indirect table of 300 chained descriptors.
    let table = 0x40000;
    for i in 0..300u16 {
        desc(&m, table, i, 0x11000, 4, F_NEXT, i + 1);
    }
    desc(&m, DESC, 0, table, 300 * 16, F_INDIRECT, 0);
    assert_eq!(
        first(&m).unwrap().unwrap().unwrap_err(),
        ChainError::Unterminated
    );
}

#[test]
fn a_broken_queue_stops_the_device_and_bad_sizes_are_refused() {
    let m = mem();
    // The avail index runs more than a ring ahead.
    m.write_bytes(Gpa(AVAIL + 2), &100u16.to_le_bytes())
        .unwrap();
    assert!(matches!(
        first(&m),
        Err(QueueError::IndexBeyondRing { ahead: 100, .. })
    ));
    // A head index beyond the ring.
    offer(&m, &[SIZE + 3]);
    assert_eq!(first(&m).unwrap_err(), QueueError::Rings);

    let io = m.io_mem();
    let rec = |size, used| QueueRecord {
        size,
        desc: DESC,
        avail: AVAIL,
        used,
        next_avail: 0,
        next_used: 0,
    };
    let st = |q| TransportState {
        queues: vec![q],
        ..Default::default()
    };
    for (q, why) in [
        (rec(3, USED), "power of two"),
        (rec(512, USED), "power of two"),
        (rec(0, USED), "power of two"),
        (rec(SIZE, USED + 2), "misaligned"),
        (rec(SIZE, 3 << 20), "guest-writable"),
        (rec(SIZE, (4 << 20) - 8), "guest-writable"),
    ] {
        let e = restore_queues(&st(q), 1, &io).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn a_read_lands_in_guest_memory_marked_dirty_and_a_bad_header_gets_ioerr() {
    let dir = std::env::temp_dir().join(format!("duet-vblk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("d.img");
    let mut data = vec![0u8; 1 << 20];
    data[4096..8192].fill(0x5a);
    std::fs::write(&img, &data).unwrap();
    let spec = parse_spec(img.to_str().unwrap()).unwrap();
    let dev = open_all(&[spec], 0).unwrap().pop().unwrap();
    let mut e = BlkEngine::new(Arc::new(dev));
    let m = mem();
    let io = m.io_mem();
    let mut q = vec![queue(&io)];
    // IN of 4 KiB at sector 8.
    let mut hdr = [0u8; 16];
    hdr[8..16].copy_from_slice(&8u64.to_le_bytes());
    m.write_bytes(Gpa(0x10000), &hdr).unwrap();
    desc(&m, DESC, 0, 0x10000, 16, F_NEXT, 1);
    desc(&m, DESC, 1, 0x20000, 4096, F_NEXT | F_WRITE, 2);
    desc(&m, DESC, 2, 0x12000, 1, F_WRITE, 0);
    // A second request with a 4-byte header: refused, status IOERR.
    desc(&m, DESC, 3, 0x10000, 4, F_NEXT, 4);
    desc(&m, DESC, 4, 0x13000, 1, F_WRITE, 0);
    offer(&m, &[0, 3]);
    m.write_bytes(Gpa(0x12000), &[0xff]).unwrap();
    m.host_dirty().set(true);
    assert!(e.process(&mut q, &io, &io.writable()).unwrap());
    let mut b = [0u8; 4096];
    m.read_bytes(Gpa(0x20000), &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x5a));
    let mut s = [0xffu8; 1];
    m.read_bytes(Gpa(0x12000), &mut s).unwrap();
    assert_eq!(s[0], 0, "status OK");
    m.read_bytes(Gpa(0x13000), &mut s).unwrap();
    assert_eq!(s[0], 1, "status IOERR");
    let dirty = m.host_dirty().take();
    for page in [0x20, 0x12, 0x13, USED / 0x1000] {
        assert!(
            dirty.contains(&page),
            "page {page:#x} not marked: {dirty:?}"
        );
    }
    // Both came back in the used ring.
    let mut idx = [0u8; 2];
    m.read_bytes(Gpa(USED + 2), &mut idx).unwrap();
    assert_eq!(u16::from_le_bytes(idx), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_device_held_before_it_starts_serves_nothing_until_resumed() {
    // A migration destination starts its devices held until Commit: a
    // write the guest left in its queue is the source's until then.
    use super::kinds::VirtioBlock;
    use super::StartCtx;
    use crate::devices::Device;
    use duet_abi::virtio::*;
    let dir = std::env::temp_dir().join(format!("duet-vblk-held-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("d.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let spec = parse_spec(img.to_str().unwrap()).unwrap();
    let dev = open_all(&[spec], 0).unwrap().pop().unwrap();
    let m = mem();
    // OUT of 512 bytes of 0xa5 at sector 0.
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&1u32.to_le_bytes());
    m.write_bytes(Gpa(0x40000), &hdr).unwrap();
    m.write_bytes(Gpa(0x41000), &[0xa5; 512]).unwrap();
    desc(&m, DESC, 0, 0x40000, 16, F_NEXT, 1);
    desc(&m, DESC, 1, 0x41000, 512, F_NEXT, 2);
    desc(&m, DESC, 2, 0x42000, 1, F_WRITE, 0);
    offer(&m, &[0]);
    let saved = TransportState {
        features: VIRTIO_F_VERSION_1,
        status: STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        queues: vec![QueueRecord {
            size: SIZE,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            next_avail: 0,
            next_used: 0,
        }],
    };
    let used = || {
        let mut idx = [0u8; 2];
        m.read_bytes(Gpa(USED + 2), &mut idx).unwrap();
        u16::from_le_bytes(idx)
    };
    let mut v = VirtioBlock::new(0, dev, Some(saved)).unwrap();
    v.quiesce();
    let no_doorbell = |_: u16, _: &vmm_sys_util::eventfd::EventFd| Ok(());
    v.start(&StartCtx {
        mem: &m,
        ioeventfd: &no_doorbell,
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(used(), 0, "a held device served its queue");
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0));
    v.resume();
    let t = std::time::Instant::now();
    while used() == 0 && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(used(), 1, "the resumed device did not serve its queue");
    assert!(std::fs::read(&img).unwrap()[..512]
        .iter()
        .all(|&b| b == 0xa5));
    drop(v);
    std::fs::remove_dir_all(&dir).unwrap();
}
