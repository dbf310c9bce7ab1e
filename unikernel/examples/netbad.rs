//! A misbehaving network guest: hands the network hypercalls bad devices,
//! lengths and buffers and prints `CASE -> result` for each. Boot it with
//! one `--net` device.
#![no_std]
#![no_main]

use duet::abi::hypercall::{
    Error, Hypercall, NetBatchArgs, NetFrameArgs, NetFrameDesc, ETH_HEADER_LEN, NET_BATCH_MAX,
};
use duet::abi::Gpa;
use duet::hypercall::{call, result};

duet::main!(main);

fn frame(nr: Hypercall, device: u32, buf: u64, len: u64) -> Result<u64, Error> {
    let mut a = NetFrameArgs {
        device,
        flags: 0,
        buf: Gpa(buf),
        len,
        ret: 0,
    };
    call(nr, &mut a);
    result(a.ret)
}

fn batch(nr: Hypercall, count: u32, frames: u64) -> Result<u64, Error> {
    let mut a = NetBatchArgs {
        device: 0,
        count,
        frames: Gpa(frames),
        ret: 0,
    };
    call(nr, &mut a);
    result(a.ret)
}

static RODATA: [u8; 4096] = [0; 4096];

fn main() -> i32 {
    let mem = duet::rt::boot_info().mem_size;
    let mtu = u64::from(duet::rt::boot_info().devices[0].mtu);
    let max = mtu + ETH_HEADER_LEN;
    let mut buf = [0u8; 9216];
    // A well-formed broadcast frame of a local experimental ethertype.
    buf[..6].fill(0xff);
    buf[12] = 0x88;
    buf[13] = 0xb5;
    let b = buf.as_mut_ptr() as u64;
    let ro = RODATA.as_ptr() as u64;
    use Hypercall::*;
    duet::println!("send-no-device -> {:?}", frame(NetSend, 7, b, 64));
    duet::println!("send-zero -> {:?}", frame(NetSend, 0, b, 0));
    duet::println!(
        "send-runt -> {:?}",
        frame(NetSend, 0, b, ETH_HEADER_LEN - 1)
    );
    duet::println!("send-too-big -> {:?}", frame(NetSend, 0, b, max + 1));
    duet::println!("send-beyond-memory -> {:?}", frame(NetSend, 0, mem - 8, 64));
    duet::println!("send-overflow -> {:?}", frame(NetSend, 0, u64::MAX - 8, 64));
    duet::println!("recv-no-device -> {:?}", frame(NetRecv, 7, b, max));
    duet::println!("recv-small-buffer -> {:?}", frame(NetRecv, 0, b, 64));
    duet::println!("recv-readonly -> {:?}", frame(NetRecv, 0, ro, max));
    duet::println!(
        "recv-beyond-memory -> {:?}",
        frame(NetRecv, 0, mem - 8, max)
    );
    duet::println!("batch-zero -> {:?}", batch(NetRecvBatch, 0, b));
    duet::println!(
        "batch-too-many -> {:?}",
        batch(NetSendBatch, NET_BATCH_MAX + 1, b)
    );
    duet::println!(
        "batch-table-beyond-memory -> {:?}",
        batch(NetSendBatch, 2, mem - 16)
    );
    duet::println!("batch-table-readonly -> {:?}", batch(NetRecvBatch, 1, ro));
    let mut descs = [NetFrameDesc {
        buf: Gpa(mem + 4096),
        len: 64,
    }; 2];
    let d = descs.as_mut_ptr() as u64;
    duet::println!("batch-bad-frame -> {:?}", batch(NetSendBatch, 2, d));
    let mut good_then_bad = [
        NetFrameDesc {
            buf: Gpa(b),
            len: 60,
        },
        descs[1],
    ];
    let d = good_then_bad.as_mut_ptr() as u64;
    duet::println!("batch-good-then-bad -> {:?}", batch(NetSendBatch, 2, d));
    duet::println!("send-ok -> {:?}", frame(NetSend, 0, b, 60));
    0
}
