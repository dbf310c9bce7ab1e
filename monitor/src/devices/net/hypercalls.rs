//! Network hypercalls: frames move between a TAP fd and guest memory with
//! one `readv(2)`/`write(2)` each and no monitor-side copy.
//!
//! Everything the guest passes is checked: device id and kind, lengths
//! against MTU + Ethernet header, buffers against guest memory (receive
//! buffers against guest-writable memory). Host errors are logged and come
//! back as `Error::Io`; the monitor keeps running.

use super::NetDevice;
use crate::call::handle;
use crate::devices::Devices;
use crate::memory::{Frame, GuestMem};
use crate::outcome::Flow;
use duet_abi::hypercall::{
    Error, Hypercall, NetBatchArgs, NetFrameArgs, NetFrameDesc, ETH_HEADER_LEN, NET_BATCH_MAX,
};
use duet_abi::Gpa;
use std::io::ErrorKind;

/// Sends one frame.
fn send_one(mem: &GuestMem, dev: &mut NetDevice, buf: Gpa, len: u64) -> Result<u64, Error> {
    if len < ETH_HEADER_LEN {
        return Err(Error::Inval);
    }
    if len > dev.max_frame() {
        return Err(Error::TooBig);
    }
    if dev.failed() {
        return Err(Error::Io);
    }
    match mem.write_to_fd(buf, len, dev.fd())? {
        Ok(n) => Ok(n as u64),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Err(Error::Again),
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(Error::Again),
        Err(e) => {
            dev.host_error("send", &e);
            Err(Error::Io)
        }
    }
}

/// Receives one frame into a buffer of `cap` bytes, which must hold a
/// frame of MTU + header. A longer frame (the host raised the TAP's MTU
/// after boot) is dropped whole rather than handed over cut.
fn recv_one(mem: &GuestMem, dev: &mut NetDevice, buf: Gpa, cap: u64) -> Result<u64, Error> {
    if cap < dev.max_frame() {
        return Err(Error::Inval);
    }
    if dev.failed() {
        return Err(Error::Io);
    }
    loop {
        match mem.read_frame(buf, cap, dev.fd())? {
            Ok(Frame::Oversized(n)) => dev.dropped_oversized(n, cap),
            Ok(Frame::Whole(0)) => return Err(Error::Again),
            Ok(Frame::Whole(n)) => return Ok(n as u64),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(Error::Again),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                dev.host_error("receive", &e);
                return Err(Error::Io);
            }
        }
    }
}

/// [`Hypercall::NetSend`] and [`Hypercall::NetRecv`].
pub fn frame(devs: &mut Devices, mem: &GuestMem, value: u32, call: Hypercall) -> Flow {
    handle(mem, call, value, |a: &mut NetFrameArgs| {
        let dev = devs.get_mut::<NetDevice>(a.device).ok_or(Error::NoDev)?;
        if call == Hypercall::NetSend {
            send_one(mem, dev, a.buf, a.len)
        } else {
            recv_one(mem, dev, a.buf, a.len)
        }
    })
}

/// [`Hypercall::NetSendBatch`] and [`Hypercall::NetRecvBatch`].
pub fn batch(devs: &mut Devices, mem: &GuestMem, value: u32, call: Hypercall) -> Flow {
    handle(mem, call, value, |a: &mut NetBatchArgs| {
        run_batch(devs, mem, a, call == Hypercall::NetRecvBatch)
    })
}

/// Runs a batch: up to `count` frames, stopping at the first failure.
/// Returns the number done, or the first frame's error.
fn run_batch(
    devs: &mut Devices,
    mem: &GuestMem,
    args: &NetBatchArgs,
    recv: bool,
) -> Result<u64, Error> {
    if args.count == 0 {
        return Err(Error::Inval);
    }
    if args.count > NET_BATCH_MAX {
        return Err(Error::TooBig);
    }
    let desc_size = std::mem::size_of::<NetFrameDesc>() as u64;
    let table_len = u64::from(args.count) * desc_size;
    // Receiving writes each descriptor's length back: the table must be
    // writable before the first frame is taken off the TAP.
    if recv {
        mem.check_writable(args.frames, table_len)?;
    } else {
        mem.check(args.frames, table_len)?;
    }
    let dev = devs.get_mut::<NetDevice>(args.device).ok_or(Error::NoDev)?;
    let mut done = 0u64;
    for i in 0..u64::from(args.count) {
        // In range: checked above, and i < NET_BATCH_MAX.
        let at = Gpa(args.frames.0 + i * desc_size);
        let mut d: NetFrameDesc = mem.read_plain(at)?;
        let res = if recv {
            recv_one(mem, dev, d.buf, d.len)
        } else {
            send_one(mem, dev, d.buf, d.len)
        };
        match res {
            Ok(n) => {
                if recv {
                    d.len = n;
                    mem.write_plain(at, &d)?;
                }
                done += 1;
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}
