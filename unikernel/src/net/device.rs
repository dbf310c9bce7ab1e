//! The network device as smoltcp sees it: a `phy::Device` over the network
//! hypercalls.
//!
//! Batched mode (the default) drains up to [`NET_BATCH_MAX`] frames per exit
//! into a small queue before each stack poll, and sends everything the stack
//! produced in one exit after it. Single-frame mode (`NET_SINGLE=1` in the
//! environment) makes one exit per frame, for comparison.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use duet_abi::hypercall::{
    Error, Hypercall, NetBatchArgs, NetFrameArgs, NetFrameDesc, ETH_HEADER_LEN, NET_BATCH_MAX,
};
use duet_abi::Gpa;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::stats::DeviceStats;
use super::vnet::VirtioNetDev;
use crate::hypercall::{call, result};

const BATCH: usize = NET_BATCH_MAX as usize;

/// Frames waiting to be sent, in reusable buffers.
pub(crate) struct TxQueue {
    id: u32,
    single: bool,
    bufs: Vec<Vec<u8>>,
    used: usize,
    pub(crate) error: Option<Error>,
    pub(crate) stats: DeviceStats,
}

impl TxQueue {
    /// Queues one frame of `len` bytes that `f` fills.
    pub(crate) fn push<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.used == BATCH {
            self.flush();
        }
        if self.bufs.len() == self.used {
            self.bufs.push(Vec::new());
        }
        let buf = &mut self.bufs[self.used];
        buf.resize(len, 0);
        let r = f(buf);
        self.used += 1;
        if self.single {
            self.flush();
        }
        r
    }

    /// Sends every queued frame (one exit in batched mode).
    pub(crate) fn flush(&mut self) {
        if self.used == 0 {
            return;
        }
        let n = self.used;
        self.used = 0;
        if self.single {
            for i in 0..n {
                let b = &self.bufs[i];
                let mut a = NetFrameArgs {
                    device: self.id,
                    flags: 0,
                    buf: Gpa(b.as_ptr() as u64),
                    len: b.len() as u64,
                    ret: 0,
                };
                call(Hypercall::NetSend, &mut a);
                self.stats.tx_calls += 1;
                self.sent(result(a.ret).map(|_| 1), 1);
            }
            return;
        }
        let mut descs = [NetFrameDesc::default(); BATCH];
        for (d, b) in descs.iter_mut().zip(&self.bufs[..n]) {
            *d = NetFrameDesc {
                buf: Gpa(b.as_ptr() as u64),
                len: b.len() as u64,
            };
        }
        let mut a = NetBatchArgs {
            device: self.id,
            count: n as u32,
            frames: Gpa(descs.as_ptr() as u64),
            ret: 0,
        };
        call(Hypercall::NetSendBatch, &mut a);
        self.stats.tx_calls += 1;
        self.sent(result(a.ret), n as u64);
    }

    fn sent(&mut self, r: Result<u64, Error>, tried: u64) {
        match r {
            Ok(k) => {
                self.stats.tx_frames += k;
                self.stats.tx_dropped += tried.saturating_sub(k);
            }
            Err(Error::Again) => self.stats.tx_dropped += tried,
            Err(e) => {
                self.stats.tx_dropped += tried;
                self.error.get_or_insert(e);
            }
        }
    }
}

/// A network device of the monitor's device table.
pub(crate) struct NetDev {
    id: u32,
    mtu: usize,
    rx: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    /// The last batch was full: more frames may be waiting.
    more: bool,
    pub(crate) tx: TxQueue,
    /// The virtio device, when the NIC is one (then the rest is unused).
    v: Option<VirtioNetDev>,
}

impl NetDev {
    pub(crate) fn new(id: u32, mtu: u32, single: bool) -> NetDev {
        let virtio = crate::rt::boot_info()
            .devices
            .get(id as usize)
            .is_some_and(|d| d.flags & duet_abi::boot::DEVICE_FLAG_VIRTIO != 0);
        let mut tx_error = None;
        let v = if virtio {
            VirtioNetDev::new(id, mtu)
                .map_err(|e| tx_error = Some(e))
                .ok()
        } else {
            None
        };
        NetDev {
            v,
            id,
            mtu: mtu as usize,
            rx: VecDeque::new(),
            pool: Vec::new(),
            more: false,
            tx: TxQueue {
                id,
                single,
                bufs: Vec::new(),
                used: 0,
                error: tx_error,
                stats: DeviceStats::default(),
            },
        }
    }

    fn frame_cap(&self) -> usize {
        self.mtu + ETH_HEADER_LEN as usize
    }

    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.resize(self.frame_cap(), 0);
        b
    }

    /// The first error the host reported, if any.
    pub(crate) fn error(&self) -> Option<Error> {
        match &self.v {
            Some(v) => v.error,
            None => self.tx.error,
        }
    }

    /// Counters.
    pub(crate) fn stats(&self) -> DeviceStats {
        match &self.v {
            Some(v) => v.stats,
            None => self.tx.stats,
        }
    }

    /// The virtio device, when the NIC is one.
    pub(crate) fn virtio(&mut self) -> Option<&mut VirtioNetDev> {
        self.v.as_mut()
    }

    /// Queues one frame of `len` bytes that `f` fills.
    pub(crate) fn push_frame<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        match &mut self.v {
            Some(v) => v.send(len, f),
            None => self.tx.push(len, f),
        }
    }

    /// Sends what is queued (virtio sends as it queues).
    pub(crate) fn flush_tx(&mut self) {
        if self.v.is_none() {
            self.tx.flush();
        }
    }

    /// Fetches waiting frames into the queue when it is empty; returns how
    /// many arrived. One exit (batched) or one exit per frame (single).
    pub(crate) fn refill(&mut self) -> usize {
        if let Some(v) = &mut self.v {
            return v.refill();
        }
        if !self.rx.is_empty() || self.tx.error.is_some() {
            return 0;
        }
        if self.tx.single {
            return usize::from(self.recv_single());
        }
        let mut bufs: [Vec<u8>; BATCH] = core::array::from_fn(|_| Vec::new());
        let mut descs = [NetFrameDesc::default(); BATCH];
        for (b, d) in bufs.iter_mut().zip(descs.iter_mut()) {
            *b = self.buffer();
            *d = NetFrameDesc {
                buf: Gpa(b.as_mut_ptr() as u64),
                len: b.len() as u64,
            };
        }
        let mut a = NetBatchArgs {
            device: self.id,
            count: BATCH as u32,
            frames: Gpa(descs.as_mut_ptr() as u64),
            ret: 0,
        };
        call(Hypercall::NetRecvBatch, &mut a);
        self.tx.stats.rx_calls += 1;
        let n = match result(a.ret) {
            Ok(n) => (n as usize).min(BATCH),
            Err(Error::Again) => 0,
            Err(e) => {
                self.tx.error.get_or_insert(e);
                0
            }
        };
        for (i, mut b) in bufs.into_iter().enumerate() {
            if i < n {
                b.truncate(descs[i].len as usize);
                self.rx.push_back(b);
            } else {
                self.pool.push(b);
            }
        }
        self.tx.stats.rx_frames += n as u64;
        self.more = n == BATCH;
        n
    }

    fn recv_single(&mut self) -> bool {
        let mut b = self.buffer();
        let mut a = NetFrameArgs {
            device: self.id,
            flags: 0,
            buf: Gpa(b.as_mut_ptr() as u64),
            len: b.len() as u64,
            ret: 0,
        };
        call(Hypercall::NetRecv, &mut a);
        self.tx.stats.rx_calls += 1;
        match result(a.ret) {
            Ok(n) => {
                b.truncate(n as usize);
                self.rx.push_back(b);
                self.tx.stats.rx_frames += 1;
                true
            }
            Err(e) => {
                if e != Error::Again {
                    self.tx.error.get_or_insert(e);
                }
                self.pool.push(b);
                false
            }
        }
    }
}

/// A received frame (bytes `start..start + len` of its buffer); the
/// buffer goes back to the pool once consumed.
pub(crate) struct RxToken<'a> {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    pool: &'a mut Vec<Vec<u8>>,
}

/// Room for one frame in the transmit queue.
pub(crate) enum TxToken<'a> {
    /// The hypercall device's batch.
    Hc(&'a mut TxQueue),
    /// The virtio transmit queue.
    Virtio(&'a mut VirtioNetDev),
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.buf[self.start..self.start + self.len]);
        self.pool.push(self.buf);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self {
            TxToken::Hc(q) => q.push(len, f),
            TxToken::Virtio(v) => v.send(len, f),
        }
    }
}

impl phy::Device for NetDev {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.v.is_some() {
            let NetDev { v, pool, .. } = self;
            let v = v.as_mut()?;
            v.give_back(pool);
            let (buf, start, len) = v.next_frame()?;
            return Some((
                RxToken {
                    buf,
                    start,
                    len,
                    pool,
                },
                TxToken::Virtio(v),
            ));
        }
        // Single-frame mode fetches here, one exit per frame; batched mode
        // fetches again only when the last batch was full.
        if self.rx.is_empty() && (self.tx.single || self.more) {
            self.refill();
        }
        let buf = self.rx.pop_front()?;
        let len = buf.len();
        Some((
            RxToken {
                buf,
                start: 0,
                len,
                pool: &mut self.pool,
            },
            TxToken::Hc(&mut self.tx),
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        match &mut self.v {
            Some(v) => v.can_send().then_some(TxToken::Virtio(v)),
            None => Some(TxToken::Hc(&mut self.tx)),
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_cap();
        caps
    }
}
