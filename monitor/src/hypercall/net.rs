//! Network hypercalls: frames move between a TAP fd and guest memory with
//! one `read(2)`/`write(2)` each and no monitor-side copy.
//!
//! Everything the guest passes is checked: device id and kind, lengths
//! against MTU + Ethernet header, buffers against guest memory (receive
//! buffers against guest-writable memory). Host errors are logged and come
//! back as `Error::Io`; the monitor keeps running.

use super::{bad_args, Flow};
use crate::devices::net::NetDevice;
use crate::devices::Device;
use crate::memory::GuestMem;
use crate::vm::Vm;
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
/// frame of MTU + header (so no frame is ever cut).
fn recv_one(mem: &GuestMem, dev: &mut NetDevice, buf: Gpa, cap: u64) -> Result<u64, Error> {
    if cap < dev.max_frame() {
        return Err(Error::Inval);
    }
    if dev.failed() {
        return Err(Error::Io);
    }
    loop {
        match mem.read_from_fd(buf, cap, dev.fd())? {
            // A frame longer than the buffer (the host raised the TAP's MTU
            // after boot) was cut by the kernel: drop it.
            Ok(n) if n as u64 > cap => {
                log::debug!("tap {}: dropped a {n}-byte frame", dev.name());
                continue;
            }
            Ok(0) => return Err(Error::Again),
            Ok(n) => return Ok(n as u64),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Err(Error::Again),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                dev.host_error("receive", &e);
                return Err(Error::Io);
            }
        }
    }
}

fn frame_call(vm: &mut Vm, value: u32, call: Hypercall) -> Flow {
    let at = Gpa(u64::from(value));
    let mut args: NetFrameArgs = match vm.mem.read_plain(at) {
        Ok(a) => a,
        Err(e) => return bad_args(call, value, e),
    };
    let res = match vm.devices.get_mut(args.device) {
        Some(Device::Net(dev)) if call == Hypercall::NetSend => {
            send_one(&vm.mem, dev, args.buf, args.len)
        }
        Some(Device::Net(dev)) => recv_one(&vm.mem, dev, args.buf, args.len),
        _ => Err(Error::NoDev),
    };
    args.ret = match res {
        Ok(n) => n as i64,
        Err(e) => e.to_ret(),
    };
    match vm.mem.write_plain(at, &args) {
        Ok(()) => Flow::Continue,
        Err(e) => bad_args(call, value, e),
    }
}

/// [`Hypercall::NetSend`].
pub fn send(vm: &mut Vm, value: u32) -> Flow {
    frame_call(vm, value, Hypercall::NetSend)
}

/// [`Hypercall::NetRecv`].
pub fn recv(vm: &mut Vm, value: u32) -> Flow {
    frame_call(vm, value, Hypercall::NetRecv)
}

/// Runs a batch: up to `count` frames, stopping at the first failure.
/// Returns the number done, or the first frame's error.
fn batch(vm: &mut Vm, args: &NetBatchArgs, recv: bool) -> Result<u64, Error> {
    if args.count == 0 {
        return Err(Error::Inval);
    }
    if args.count > NET_BATCH_MAX {
        return Err(Error::TooBig);
    }
    let desc_size = std::mem::size_of::<NetFrameDesc>() as u64;
    let table_len = u64::from(args.count) * desc_size;
    if recv {
        vm.mem.check_writable(args.frames, table_len)?;
    } else {
        vm.mem.check(args.frames, table_len)?;
    }
    let mem = &vm.mem;
    let dev = match vm.devices.get_mut(args.device) {
        Some(Device::Net(dev)) => dev,
        _ => return Err(Error::NoDev),
    };
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

fn batch_call(vm: &mut Vm, value: u32, call: Hypercall) -> Flow {
    let at = Gpa(u64::from(value));
    let mut args: NetBatchArgs = match vm.mem.read_plain(at) {
        Ok(a) => a,
        Err(e) => return bad_args(call, value, e),
    };
    args.ret = match batch(vm, &args, call == Hypercall::NetRecvBatch) {
        Ok(n) => n as i64,
        Err(e) => e.to_ret(),
    };
    match vm.mem.write_plain(at, &args) {
        Ok(()) => Flow::Continue,
        Err(e) => bad_args(call, value, e),
    }
}

/// [`Hypercall::NetSendBatch`].
pub fn send_batch(vm: &mut Vm, value: u32) -> Flow {
    batch_call(vm, value, Hypercall::NetSendBatch)
}

/// [`Hypercall::NetRecvBatch`].
pub fn recv_batch(vm: &mut Vm, value: u32) -> Flow {
    batch_call(vm, value, Hypercall::NetRecvBatch)
}
