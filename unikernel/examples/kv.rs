//! A persistent key-value store on a disk: `kv put K V`, `kv get K`, `kv list`.
//!
//! The disk holds an append-only log of records, each
//! `magic | seq | key len | value len | crc32 | key | value` (little endian,
//! the CRC covering everything after itself and `seq`, `key len`, `value
//! len`). On start the log is replayed from byte 0; replay stops at the
//! first record that is torn (bad checksum, impossible lengths, or a broken
//! sequence) and the next `put` overwrites it. `put` prints `ok` only after
//! the flush returned.
//!
//! The disk is `KV_DISK` (a device name) or the first one. With
//! `KV_HOLD=1`, `put` spins after printing `ok` (for crash tests).
#![no_std]
#![no_main]

extern crate alloc;
use alloc::{collections::BTreeMap, string::String, vec, vec::Vec};
use duet::abi::hypercall::Error;
use duet::block::{BlockIo, Disk};

duet::main!(main);

const MAGIC: u32 = u32::from_le_bytes(*b"KVL1");
const HEADER: usize = 20;
const KEY_MAX: usize = 4096;
const VALUE_MAX: usize = 1 << 20;
/// Replay reads the log in windows of this size (one exit each).
const WINDOW: u64 = 64 * 1024;

/// CRC-32 (IEEE) lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for p in parts {
        for &b in *p {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads arbitrary byte ranges of a disk through an aligned window.
struct Reader<'d, B: BlockIo> {
    dev: &'d B,
    base: u64,
    buf: Vec<u8>,
}

impl<B: BlockIo> Reader<'_, B> {
    /// Bytes `[pos, pos + len)`, or `None` past the end of the device.
    fn get(&mut self, pos: u64, len: usize) -> Result<Option<&[u8]>, Error> {
        let end = pos + len as u64;
        if end > self.dev.capacity() {
            return Ok(None);
        }
        if pos < self.base || end > self.base + self.buf.len() as u64 {
            let ss = u64::from(self.dev.sector_size());
            self.base = pos - pos % ss;
            let want = (end - self.base).next_multiple_of(ss).max(WINDOW);
            let n = want.min(self.dev.capacity() - self.base);
            self.buf.resize(n as usize, 0);
            self.dev.read_at(self.base, &mut self.buf)?;
        }
        let at = (pos - self.base) as usize;
        Ok(Some(&self.buf[at..at + len]))
    }
}

/// The store: the replayed index and where the log ends.
struct Store<'d, B: BlockIo> {
    dev: &'d B,
    map: BTreeMap<String, String>,
    end: u64,
    last: u64,
    seq: u32,
}

impl<'d, B: BlockIo> Store<'d, B> {
    fn open(dev: &'d B) -> Result<Self, Error> {
        let mut s = Store {
            dev,
            map: BTreeMap::new(),
            end: 0,
            last: 0,
            seq: 0,
        };
        let mut r = Reader {
            dev,
            base: 0,
            buf: Vec::new(),
        };
        while let Some(h) = r.get(s.end, HEADER)? {
            if h.iter().all(|&b| b == 0) {
                break; // the clean end of the log
            }
            let (magic, seq, klen, vlen, crc) = (
                le32(h, 0),
                le32(h, 4),
                le32(h, 8) as usize,
                le32(h, 12) as usize,
                le32(h, 16),
            );
            let meta: [u8; 12] = h[4..16].try_into().unwrap_or([0; 12]);
            let body = if magic == MAGIC && seq == s.seq && klen <= KEY_MAX && vlen <= VALUE_MAX {
                r.get(s.end + HEADER as u64, klen + vlen)?
            } else {
                None
            };
            let record = body.filter(|b| crc32(&[&meta, b]) == crc).and_then(|b| {
                let k = core::str::from_utf8(&b[..klen]).ok()?;
                let v = core::str::from_utf8(&b[klen..]).ok()?;
                Some((String::from(k), String::from(v)))
            });
            let Some((k, v)) = record else {
                duet::println!("kv: torn record at byte {} skipped", s.end);
                break;
            };
            s.map.insert(k, v);
            s.last = s.end;
            s.end += (HEADER + klen + vlen) as u64;
            s.seq += 1;
        }
        Ok(s)
    }

    /// Appends a record and flushes; returns once it is durable.
    fn put(&mut self, key: &str, value: &str) -> Result<(), Error> {
        if key.len() > KEY_MAX || value.len() > VALUE_MAX {
            return Err(Error::TooBig);
        }
        let ss = u64::from(self.dev.sector_size());
        let start = self.end - self.end % ss;
        let head = (self.end - start) as usize;
        let len = head + HEADER + key.len() + value.len();
        let mut buf = vec![0u8; (len as u64).next_multiple_of(ss) as usize];
        if start + buf.len() as u64 > self.dev.capacity() {
            return Err(Error::NoSpace);
        }
        if head > 0 {
            // Keep the earlier records that share the first sector.
            self.dev.read_at(start, &mut buf[..ss as usize])?;
            buf[head..].fill(0);
        }
        let mut meta = [0u8; 12];
        meta[0..4].copy_from_slice(&self.seq.to_le_bytes());
        meta[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
        meta[8..12].copy_from_slice(&(value.len() as u32).to_le_bytes());
        let crc = crc32(&[&meta, key.as_bytes(), value.as_bytes()]);
        let rec = &mut buf[head..len];
        rec[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        rec[4..16].copy_from_slice(&meta);
        rec[16..20].copy_from_slice(&crc.to_le_bytes());
        rec[HEADER..HEADER + key.len()].copy_from_slice(key.as_bytes());
        rec[HEADER + key.len()..].copy_from_slice(value.as_bytes());
        self.dev.write_at(start, &buf)?;
        self.dev.flush()?;
        self.map.insert(key.into(), value.into());
        self.last = self.end;
        self.end += (len - head) as u64;
        self.seq += 1;
        Ok(())
    }
}

fn pick_disk() -> Option<Disk> {
    match duet::env::var("KV_DISK") {
        Some(name) => duet::block::disk(name),
        None => duet::block::disks().next(),
    }
}

fn main() -> i32 {
    let Some(disk) = pick_disk() else {
        duet::println!("kv: no disk; run with --disk FILE");
        return 2;
    };
    let mut store = match Store::open(&disk) {
        Ok(s) => s,
        Err(e) => {
            duet::println!("kv: cannot read the log: {e}");
            return 1;
        }
    };
    let args: Vec<&str> = duet::env::args().collect();
    match args.as_slice() {
        ["put", k, v] => match store.put(k, v) {
            Ok(()) => {
                duet::println!("ok");
                if duet::env::var("KV_HOLD") == Some("1") {
                    loop {
                        core::hint::spin_loop();
                    }
                }
                0
            }
            Err(e) => {
                duet::println!("kv: put failed: {e}");
                1
            }
        },
        ["get", k] => match store.map.get(*k) {
            Some(v) => {
                duet::println!("{v}");
                0
            }
            None => {
                duet::println!("kv: {k}: not found");
                1
            }
        },
        ["list"] => {
            for (k, v) in &store.map {
                duet::println!("{k}={v}");
            }
            duet::println!(
                "# {} records, last at byte {}, log ends at byte {}",
                store.seq,
                store.last,
                store.end
            );
            0
        }
        _ => {
            duet::println!("usage: kv put KEY VALUE | kv get KEY | kv list");
            2
        }
    }
}
