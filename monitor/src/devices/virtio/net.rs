//! virtio-net: frames move between the TAP and the queues with one
//! `readv`/`writev` each, straight into and out of guest memory. Receive
//! queue 0 takes frames while it has buffers (the TAP is not read
//! otherwise, so the kernel queues or drops, not the monitor); transmit
//! queue 1 sends each chain minus its `virtio_net_hdr`. The device model
//! (the TAP, its MTU, failure and drop accounting) is the [`NetDevice`]
//! the network hypercalls use.

use super::chain::{self, ChainError, QueueError, Seg};
use super::core::{give_back, Engine};
use super::LogLimit;
use crate::devices::net::NetDevice;
use crate::memory::{IoMem, Writable};
use duet_abi::virtio::{
    VIRTIO_CONFIG_SIZE, VIRTIO_F_VERSION_1, VIRTIO_ID_NET, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_LEN, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use std::io::ErrorKind;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use virtio_queue::{Queue, QueueT};

const RX: usize = 0;
const TX: usize = 1;
/// Most frames per direction per batch.
const BATCH: usize = 64;

/// The network engine.
pub struct NetEngine {
    /// The device model (the TAP).
    pub dev: NetDevice,
    /// Frames the TAP refused (its queue full); the guest's TCP resends.
    pub tx_dropped: u64,
    bad: LogLimit,
}

impl NetEngine {
    /// An engine over `dev`.
    pub fn new(dev: NetDevice) -> Self {
        NetEngine {
            dev,
            tx_dropped: 0,
            bad: LogLimit::default(),
        }
    }

    fn refuse(&mut self, e: ChainError) {
        let name = self.name();
        self.bad.warn(|| format!("{name}: frame refused: {e}"));
    }

    fn transmit(&mut self, q: &mut Queue, mem: &IoMem, w: &Writable) -> Result<bool, QueueError> {
        let mut served = false;
        for _ in 0..BATCH {
            let Some((head, c)) = chain::pop(q, mem, w)? else {
                break;
            };
            served = true;
            let frame = c.and_then(|c| {
                let len = c.readable_len().saturating_sub(VIRTIO_NET_HDR_LEN);
                if !c.writable.is_empty() {
                    return Err(ChainError::Shape(
                        "a frame to send with device-writable buffers",
                    ));
                }
                if c.readable_len() < VIRTIO_NET_HDR_LEN + duet_abi::hypercall::ETH_HEADER_LEN {
                    return Err(ChainError::Shape("a frame shorter than its headers"));
                }
                if len > self.dev.max_frame() {
                    return Err(ChainError::Shape("a frame longer than the MTU"));
                }
                Ok(chain::skip(&c.readable, VIRTIO_NET_HDR_LEN))
            });
            match frame {
                Err(e) => self.refuse(e),
                Ok(segs) if !self.dev.failed() => self.send(mem, &segs),
                Ok(_) => self.tx_dropped += 1,
            }
            give_back(q, mem, head, 0)?;
        }
        Ok(served)
    }

    fn send(&mut self, mem: &IoMem, segs: &[Seg]) {
        let iov = chain::iovecs(mem, segs);
        loop {
            // SAFETY: the iovecs are checked ranges of guest memory; the
            // kernel only reads them.
            let n =
                unsafe { libc::writev(self.dev.fd().as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if n >= 0 {
                return;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => self.tx_dropped += 1,
                _ if e.raw_os_error() == Some(libc::ENOBUFS) => self.tx_dropped += 1,
                _ => self.dev.host_error("send", &e),
            }
            return;
        }
    }

    fn receive(&mut self, q: &mut Queue, mem: &IoMem, w: &Writable) -> Result<bool, QueueError> {
        let mut served = false;
        for _ in 0..BATCH {
            if self.dev.failed() {
                break;
            }
            let Some((head, c)) = chain::pop(q, mem, w)? else {
                break;
            };
            let need = VIRTIO_NET_HDR_LEN + self.dev.max_frame();
            let c = match c {
                Ok(c) if !c.readable.is_empty() => Err(ChainError::Shape(
                    "a receive buffer with device-readable parts",
                )),
                Ok(c) if c.writable_len() < need => Err(ChainError::Shape(
                    "a receive buffer smaller than MTU + headers",
                )),
                other => other,
            };
            let c = match c {
                Ok(c) => c,
                Err(e) => {
                    self.refuse(e);
                    give_back(q, mem, head, 0)?;
                    served = true;
                    continue;
                }
            };
            let body = chain::take(
                &chain::skip(&c.writable, VIRTIO_NET_HDR_LEN),
                self.dev.max_frame(),
            );
            let iov = chain::iovecs(mem, &body);
            // SAFETY: the iovecs are checked ranges of guest-writable memory;
            // the kernel writes the frame there.
            let n =
                unsafe { libc::readv(self.dev.fd().as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if n <= 0 {
                // Nothing waiting (or an error): the buffer stays the
                // guest's, for the next frame.
                q.set_next_avail(q.next_avail().wrapping_sub(1));
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                        self.dev.host_error("receive", &e);
                    }
                }
                break;
            }
            let n = n as u64;
            chain::mark(mem, &body, n);
            // virtio_net_hdr: no offloads; num_buffers = 1 (no merging).
            let mut hdr = [0u8; VIRTIO_NET_HDR_LEN as usize];
            hdr[10] = 1;
            write_segs(mem, &c.writable, &hdr);
            give_back(q, mem, head, (VIRTIO_NET_HDR_LEN + n) as u32)?;
            served = true;
        }
        Ok(served)
    }
}

/// Writes `bytes` at the start of `segs`.
fn write_segs(mem: &IoMem, segs: &[Seg], bytes: &[u8]) {
    let mut at = 0;
    for s in segs {
        if at == bytes.len() {
            break;
        }
        let n = (s.len as usize).min(bytes.len() - at);
        let _ = mem.write(s.gpa, &bytes[at..at + n]);
        at += n;
    }
}

impl Engine for NetEngine {
    const DEVICE_ID: u32 = VIRTIO_ID_NET;
    const QUEUES: usize = 2;
    /// Request/response traffic has gaps longer than a spin, and a spinning
    /// thread takes a core from the peer it waits for (2-core hosts).
    const SPIN_US: u64 = 10;

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | VIRTIO_NET_F_MTU
    }

    fn config(&self) -> [u8; VIRTIO_CONFIG_SIZE] {
        let mut c = [0u8; VIRTIO_CONFIG_SIZE];
        let cfg = self.dev.config();
        c[0..6].copy_from_slice(&cfg.mac.unwrap_or_default());
        // Link up.
        c[6..8].copy_from_slice(&1u16.to_le_bytes());
        let mtu = (self.dev.max_frame() - duet_abi::hypercall::ETH_HEADER_LEN) as u16;
        c[10..12].copy_from_slice(&mtu.to_le_bytes());
        c
    }

    fn process(&mut self, q: &mut [Queue], mem: &IoMem, w: &Writable) -> Result<bool, QueueError> {
        let (rx, tx) = q.split_at_mut(TX);
        let sent = self.transmit(&mut tx[0], mem, w)?;
        let got = self.receive(&mut rx[RX], mem, w)?;
        if self.dev.failed() {
            return Err(QueueError::Backend);
        }
        Ok(sent || got)
    }

    fn wait_fd(&self, q: &mut [Queue], mem: &IoMem) -> Option<RawFd> {
        let rx = &q[RX];
        let has_buffers = rx
            .avail_idx(mem.inner(), Ordering::Acquire)
            .is_ok_and(|a| a != Wrapping(rx.next_avail()));
        (has_buffers && !self.dev.failed()).then(|| self.dev.fd().as_raw_fd())
    }

    fn input(&self) -> Option<RawFd> {
        (!self.dev.failed()).then(|| self.dev.fd().as_raw_fd())
    }

    fn buffers_wait(&self, i: usize) -> bool {
        i == RX
    }

    fn name(&self) -> String {
        format!("virtio nic on tap {}", self.dev.name())
    }
}
