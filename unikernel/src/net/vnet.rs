//! The network device over virtio: virtio-drivers' `VirtIONetRaw` with
//! every receive buffer posted up front, and transmit buffers kept until
//! the device has used them. Frames reach smoltcp without a copy on
//! receive; on transmit smoltcp writes straight into the posted buffer.

use super::stats::DeviceStats;
use crate::virtio::{self, DuetHal, DuetTransport};
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use duet_abi::hypercall::{Error, ETH_HEADER_LEN};
use duet_abi::virtio::VIRTIO_NET_HDR_LEN;
use virtio_drivers::device::net::VirtIONetRaw;

/// Entries per queue.
const QS: usize = 128;
const HDR: usize = VIRTIO_NET_HDR_LEN as usize;

/// A virtio NIC.
pub(crate) struct VirtioNetDev {
    id: u32,
    raw: VirtIONetRaw<DuetHal, DuetTransport, QS>,
    buf_len: usize,
    /// Receive buffers the device holds, by token.
    posted: Vec<Option<Vec<u8>>>,
    /// Received frames: buffer, payload start, payload length.
    rx: VecDeque<(Vec<u8>, usize, usize)>,
    pool: Vec<Vec<u8>>,
    /// Transmit buffers the device holds, by token.
    sending: Vec<Option<Vec<u8>>>,
    tx_pool: Vec<Vec<u8>>,
    rx_seen: u16,
    tx_seen: u16,
    pub(crate) error: Option<Error>,
    pub(crate) stats: DeviceStats,
}

impl VirtioNetDev {
    /// Sets up device `id` (MTU `mtu`) and posts every receive buffer.
    pub(crate) fn new(id: u32, mtu: u32) -> Result<VirtioNetDev, Error> {
        let t = virtio::transport(id).ok_or(Error::NoDev)?;
        let raw = VirtIONetRaw::new(t).map_err(|_| Error::Io)?;
        let mut d = VirtioNetDev {
            id,
            raw,
            buf_len: (mtu as usize + ETH_HEADER_LEN as usize + HDR).max(1526),
            posted: (0..QS).map(|_| None).collect(),
            rx: VecDeque::new(),
            pool: Vec::new(),
            sending: (0..QS).map(|_| None).collect(),
            tx_pool: Vec::new(),
            rx_seen: 0,
            tx_seen: 0,
            error: None,
            stats: DeviceStats::default(),
        };
        for _ in 0..QS {
            d.post();
        }
        Ok(d)
    }

    fn post(&mut self) {
        let mut b = self.pool.pop().unwrap_or_default();
        b.resize(self.buf_len, 0);
        // SAFETY: the buffer stays in `posted` (its heap block does not
        // move) and untouched until the device has used it.
        match unsafe { self.raw.receive_begin(&mut b) } {
            Ok(t) => match self.posted.get_mut(usize::from(t)) {
                Some(slot) => *slot = Some(b),
                None => self.error = Some(Error::Io),
            },
            Err(_) => self.pool.push(b),
        }
    }

    /// Takes received frames off the used ring and posts fresh buffers;
    /// returns how many arrived.
    pub(crate) fn refill(&mut self) -> usize {
        let mut n = 0;
        while let Some(t) = self.raw.poll_receive() {
            let Some(mut b) = self.posted.get_mut(usize::from(t)).and_then(Option::take) else {
                self.error = Some(Error::Io);
                break;
            };
            // SAFETY: the buffer posted with this token.
            let r = unsafe { self.raw.receive_complete(t, &mut b) };
            self.rx_seen = self.rx_seen.wrapping_add(1);
            match r {
                Ok((hdr, len)) if hdr + len <= b.len() => {
                    self.rx.push_back((b, hdr, len));
                    n += 1;
                }
                _ => self.pool.push(b),
            }
            self.post();
        }
        self.stats.rx_frames += n as u64;
        n
    }

    /// Takes back transmit buffers the device has used.
    fn reclaim(&mut self) {
        while let Some(t) = self.raw.poll_transmit() {
            let Some(b) = self.sending.get_mut(usize::from(t)).and_then(Option::take) else {
                self.error = Some(Error::Io);
                break;
            };
            // SAFETY: the buffer sent with this token.
            let _ = unsafe { self.raw.transmit_complete(t, &b) };
            self.tx_seen = self.tx_seen.wrapping_add(1);
            self.tx_pool.push(b);
        }
    }

    /// Whether a frame can be queued now.
    pub(crate) fn can_send(&mut self) -> bool {
        self.reclaim();
        self.raw.can_send()
    }

    /// Queues one frame of `len` bytes that `f` fills.
    pub(crate) fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.reclaim();
        let mut b = self.tx_pool.pop().unwrap_or_else(|| vec![0; HDR]);
        b.resize(HDR + len, 0);
        let _ = self.raw.fill_buffer_header(&mut b);
        let r = f(&mut b[HDR..]);
        // SAFETY: the buffer stays in `sending` until the device used it.
        match unsafe { self.raw.transmit_begin(&b) } {
            Ok(t) => {
                if let Some(slot) = self.sending.get_mut(usize::from(t)) {
                    *slot = Some(b);
                }
                self.stats.tx_frames += 1;
            }
            Err(_) => {
                self.stats.tx_dropped += 1;
                self.tx_pool.push(b);
            }
        }
        r
    }

    /// The next received frame, if any.
    pub(crate) fn next_frame(&mut self) -> Option<(Vec<u8>, usize, usize)> {
        if self.rx.is_empty() {
            self.refill();
        }
        self.rx.pop_front()
    }

    /// Takes back consumed frames' buffers.
    pub(crate) fn give_back(&mut self, from: &mut Vec<Vec<u8>>) {
        self.pool.append(from);
    }

    /// Waits (spinning, then sleeping in the monitor) until a frame arrives
    /// or `deadline_ns` passes; true when one did.
    pub(crate) fn wait(&mut self, deadline_ns: Option<u64>) -> bool {
        let spin_until =
            crate::time::monotonic_ns().saturating_add(virtio::spin_ns(virtio::NET_SPIN_NS));
        let generation = crate::identity().generation;
        loop {
            if self.refill() > 0 || self.error.is_some() {
                return true;
            }
            if virtio::needs_reset(self.id) {
                self.error = Some(Error::Io);
                return true;
            }
            let now = crate::time::monotonic_ns();
            if deadline_ns.is_some_and(|d| now >= d) {
                return false;
            }
            if now < spin_until {
                core::hint::spin_loop();
                continue;
            }
            // Hear of the next frame; of transmit completions only when the
            // queue is full (otherwise they would wake us for nothing).
            self.reclaim();
            let full = !self.raw.can_send();
            virtio::arm(self.id, 0, self.rx_seen);
            let tx_event = if full {
                self.tx_seen
            } else {
                self.tx_seen.wrapping_add(0x7fff)
            };
            virtio::arm(self.id, 1, tx_event);
            if self.refill() > 0 {
                return true;
            }
            // Moved while spinning (a migration or restore): the stack
            // announces itself before anything sleeps.
            if crate::identity().generation != generation {
                return false;
            }
            let dl = deadline_ns.unwrap_or(duet_abi::poll::POLL_FOREVER);
            let ready = crate::time::poll_raw(dl, 1 << self.id).unwrap_or(0);
            if self.refill() > 0 {
                return true;
            }
            if ready & !(1 << self.id) != 0 {
                return false;
            }
            if ready == 0 && deadline_ns.is_some_and(|d| crate::time::monotonic_ns() >= d) {
                return false;
            }
            if full && self.can_send() {
                return true;
            }
            if ready == 0 {
                // Woken early (a pause, a move): let the stack look.
                return false;
            }
        }
    }
}
