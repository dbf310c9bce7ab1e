//! Writes a marker to its first disk, flushes, marks its snapshot point,
//! then reads the marker back and prints it: restored from a template, it
//! shows that disk data written before the snapshot is there after restore.
#![no_std]
#![no_main]

duet::main!(main);

fn main() -> i32 {
    let Some(disk) = duet::block::disks().next() else {
        duet::println!("no disk");
        return 2;
    };
    let tag = duet::env::args().next().unwrap_or("none");
    let mut sector = [0u8; 512];
    let msg = tag.as_bytes();
    let n = msg.len().min(500);
    sector[..n].copy_from_slice(&msg[..n]);
    if disk
        .write_at(0, &sector)
        .and_then(|_| disk.flush())
        .is_err()
    {
        duet::println!("write failed");
        return 1;
    }
    duet::println!("written");
    duet::snapshot_point();
    let mut back = [0u8; 512];
    if disk.read_at(0, &mut back).is_err() {
        duet::println!("read failed");
        return 1;
    }
    let end = back.iter().position(|&b| b == 0).unwrap_or(back.len());
    duet::println!(
        "disk says {}",
        core::str::from_utf8(&back[..end]).unwrap_or("?")
    );
    0
}
