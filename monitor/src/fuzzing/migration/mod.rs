//! A migration destination's side of the stream, on bytes from the
//! fuzzer instead of a socket: the handshake (Hello, Challenge, Auth and
//! its proof), then sealed frames through [`Session`] into the frame
//! decoders, guest memory and the state blob, and the state into the
//! snapshot harness's rebuild ([`super::snapshot`]), as
//! `migration::destination::receive` does before KVM.
//!
//! Two ways in: the stream as raw bytes (the handshake parser, and sealed
//! frames that must fail authentication), or a described session: the
//! harness plays the source with a fixed test key, seals each described
//! frame properly (so the decoders behind the tag check see them), and may
//! then tamper with the sealed bytes, drop, repeat or renumber frames.

use super::gen::Len;
use super::snapshot;
use crate::compat::{self, DeviceSummary};
use crate::devices::relocate;
use crate::memory::{Backing, GuestMem};
use crate::migration::protocol::{self, Auth, Challenge, Hello, Kind, StateEnd};
use crate::migration::session::{Role, Session, Transcript};
use crate::migration::MigrateError;
use crate::persist::Persist;
use crate::statefile::StateFile;
use arbitrary::Arbitrary;
use duet_abi::{Gpa, PAGE_SIZE};
use std::io::Read;

mod source;

use source::send;

/// The pre-shared key both ends hold in these runs.
pub const KEY: &[u8] = b"duet fuzzing key, never a real one";
/// Largest guest the harness maps.
const MAX_MAPPED: u64 = 64 << 20;
const SOURCE_NONCE: [u8; protocol::NONCE_LEN] = [1; protocol::NONCE_LEN];
const DEST_NONCE: [u8; protocol::NONCE_LEN] = [2; protocol::NONCE_LEN];

/// A fuzz input.
#[derive(Arbitrary, Clone, Debug)]
pub enum Input {
    /// The whole stream the destination reads.
    Raw(Vec<u8>),
    /// A session the harness plays the source of.
    Session(Box<Described>),
}

/// The source's Hello.
#[derive(Arbitrary, Clone, Debug)]
pub struct HelloSpec {
    /// Right magic and protocol version.
    pub current: bool,
    /// Guest memory: MiB, or any number of bytes.
    pub mem: Result<u8, u64>,
    /// Devices: (kind, flags, capacity).
    pub devices: Vec<(u32, u32, u64)>,
    /// `--copy-disks`.
    pub copy_disks: bool,
}

/// A frame's payload.
#[derive(Arbitrary, Clone, Debug)]
pub enum Payload {
    /// Anything.
    Raw(Vec<u8>),
    /// A page run: first page, count, pages of data actually sent.
    Pages(u32, Len, u8),
    /// A zero-page run header.
    Run(u32, Len),
    /// A disk run: disk, offset, length, bytes of data.
    Disk(u32, Len, Len, u16),
    /// A state built from a description (one `State` frame).
    State(Box<snapshot::Spec>),
    /// The state's end: honest about the state so far, or not.
    End(bool, u32, u64),
}

/// What happens to a sealed frame on the way.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Tamper {
    /// Nothing.
    None,
    /// One byte changed.
    Byte(u16, u8),
    /// Cut short.
    Cut(u16),
    /// Sent twice.
    Twice,
    /// Not sent (its number is used up).
    Drop,
}

/// One frame of the source's.
#[derive(Arbitrary, Clone, Debug)]
pub struct FrameSpec {
    /// Kind (any byte; the sealed header carries it), or the payload's own.
    pub kind: Option<u8>,
    /// Payload.
    pub payload: Payload,
    /// Tampering.
    pub tamper: Tamper,
}

/// A session.
#[derive(Arbitrary, Clone, Debug)]
pub struct Described {
    /// The Hello.
    pub hello: HelloSpec,
    /// The source proves the key (else its proof is wrong).
    pub auth: bool,
    /// The frames after the handshake.
    pub frames: Vec<FrameSpec>,
}

/// The destination's input: bytes appended as the source "sends" them.
#[derive(Default)]
struct Wire {
    buf: Vec<u8>,
    at: usize,
}

impl Read for Wire {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Runs the destination on `input`.
pub fn run(input: &Input) {
    let _ = match input {
        Input::Raw(b) => {
            let mut w = Wire {
                buf: b.clone(),
                at: 0,
            };
            receive(&mut w, None)
        }
        Input::Session(d) => session(d),
    };
}

/// Plays session `d` through the destination; its end.
pub fn session(d: &Described) -> Result<(), MigrateError> {
    receive(&mut Wire::default(), Some(d))
}

/// `destination::receive` up to KVM; with `src`, the harness appends the
/// source's frames to `w` as the destination asks for them.
fn receive(w: &mut Wire, src: Option<&Described>) -> Result<(), MigrateError> {
    let mut src_t = Transcript::default();
    if let Some(d) = src {
        let h = &d.hello;
        let hello = Hello {
            magic: if h.current {
                protocol::MAGIC
            } else {
                *b"DUETMIG\x01"
            },
            protocol: protocol::PROTOCOL_VERSION - u32::from(!h.current),
            abi: duet_abi::ABI_VERSION,
            vendor: *b"AuthenticAMD",
            features: [0; 6],
            tsc_khz: 2_000_000,
            mem_size: match h.mem {
                Ok(mib) => u64::from(mib) << 20,
                Err(n) => n,
            },
            devices: h
                .devices
                .iter()
                .take(20)
                .map(|&(kind, flags, capacity)| DeviceSummary {
                    kind,
                    flags,
                    capacity,
                })
                .collect(),
            copy_disks: h.copy_disks,
            nonce: SOURCE_NONCE,
        };
        src_t.send(&mut w.buf, Kind::Hello, &hello)?;
    }
    // The destination's handshake.
    let mut t = Transcript::default();
    let hello: Hello = t.recv(w)?.expect(Kind::Hello)?.decode()?;
    if hello.magic != protocol::MAGIC || hello.protocol != protocol::PROTOCOL_VERSION {
        return Err(MigrateError::Rejected("version".into()));
    }
    let ch = Challenge {
        nonce: DEST_NONCE,
        mac: protocol::mac(KEY, b"dst", &t.hash(), &DEST_NONCE),
    };
    let mut back = Vec::new();
    t.send(&mut back, Kind::Challenge, &ch)?;
    let after_challenge = t.hash();
    if let Some(d) = src {
        // The source checks the challenge and proves the key.
        src_t.recv(&mut &back[..])?.expect(Kind::Challenge)?;
        let mut mac = protocol::mac(KEY, b"src", &src_t.hash(), &[]);
        if !d.auth {
            mac[0] ^= 1;
        }
        src_t.send(&mut w.buf, Kind::Auth, &Auth { mac })?;
    }
    let auth: Auth = t.recv(w)?.expect(Kind::Auth)?.decode()?;
    if !protocol::verify(KEY, b"src", &after_challenge, &[], &auth.mac) {
        return Err(MigrateError::Rejected("key".into()));
    }
    let mut sess = Session::new(KEY, Role::Destination, &hello.nonce, &DEST_NONCE, &t.hash());
    let mut source = Session::new(KEY, Role::Source, &SOURCE_NONCE, &DEST_NONCE, &src_t.hash());
    // What `compatible` checks without KVM.
    if hello.abi != duet_abi::ABI_VERSION {
        return Err(MigrateError::Rejected("abi".into()));
    }
    compat::count_devices(&hello.devices).map_err(|e| MigrateError::State(e.to_string()))?;
    let capacities: Vec<u64> = if hello.copy_disks {
        hello
            .devices
            .iter()
            .filter(|d| d.kind == duet_abi::boot::DeviceKind::Block as u32)
            .map(|d| d.capacity)
            .filter(|c| *c > 0 && c % protocol::DISK_ALIGN == 0)
            .collect()
    } else {
        Vec::new()
    };
    let size = hello.mem_size;
    if !(crate::layout::MIN_MEM..=MAX_MAPPED).contains(&size) || size % PAGE_SIZE != 0 {
        return Err(MigrateError::Rejected("memory".into()));
    }
    let mem = GuestMem::new(size).map_err(|e| MigrateError::State(e.to_string()))?;
    let pages = size / PAGE_SIZE;
    let mut blob = Vec::new();
    let mut frames = src.map_or(&[][..], |d| &d.frames[..]).iter();
    let zero_page = [0u8; PAGE_SIZE as usize];
    let end: StateEnd = loop {
        // The source sends until something waits on the wire.
        while w.at == w.buf.len() {
            match frames.next() {
                Some(f) => send(&mut source, w, f, &blob)?,
                None => break,
            }
        }
        let f = sess.read_into(w, Vec::new())?;
        match f.kind {
            Kind::Pages | Kind::ZeroPages => {
                let zero = f.kind == Kind::ZeroPages;
                let (first, count, data) = protocol::decode_pages(&f.payload, pages, zero)?;
                if zero {
                    for p in first..first + count {
                        mem.write_bytes(Gpa(p * PAGE_SIZE), &zero_page)
                            .expect("a decoded run lies in guest memory");
                    }
                } else {
                    mem.write_bytes(Gpa(first * PAGE_SIZE), data)
                        .expect("a decoded run lies in guest memory");
                }
            }
            Kind::Disk | Kind::DiskZero => {
                let zero = f.kind == Kind::DiskZero;
                let (i, offset, len, data) = protocol::decode_disk(&f.payload, &capacities, zero)?;
                assert!(i < capacities.len() && offset + len <= capacities[i]);
                assert!(zero || data.len() as u64 == len);
            }
            Kind::State => {
                if blob.len() as u64 + f.payload.len() as u64 > protocol::MAX_STATE {
                    return Err(MigrateError::Protocol("too large".into()));
                }
                blob.extend_from_slice(&f.payload);
            }
            Kind::StateEnd => break f.decode()?,
            Kind::Sync => sess.write(&mut Vec::new(), Kind::SyncAck, &[])?,
            _ => {
                f.expect(Kind::StateEnd)?;
            }
        }
    };
    if end.len != blob.len() as u64 || end.crc != crc32fast::hash(&blob) {
        return Err(MigrateError::Protocol("mismatch".into()));
    }
    let file = StateFile::decode(&blob, "fuzz").map_err(|e| MigrateError::State(e.to_string()))?;
    let mut state = file
        .to_state()
        .map_err(|e| MigrateError::State(e.to_string()))?;
    if state.memory.size != hello.mem_size {
        return Err(MigrateError::Protocol("memory".into()));
    }
    let _mem = GuestMem::restore(Backing::Filled(mem), &state.memory)
        .map_err(|e| MigrateError::State(e.to_string()))?;
    state.devices =
        relocate(std::mem::take(&mut state.devices), &[], &[]).map_err(MigrateError::State)?;
    if !snapshot::rebuild(&state) {
        return Err(MigrateError::State("the state does not rebuild".into()));
    }
    Ok(())
}
