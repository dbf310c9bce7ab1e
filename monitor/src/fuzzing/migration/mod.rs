//! A migration destination's side of the stream, on bytes from the
//! fuzzer instead of a socket, through the destination's own code: its
//! handshake ([`destination::handshake`]), its pre-copy loop and state
//! checks ([`destination::precopy`], [`destination::state_of`]), then the
//! snapshot harness's rebuild ([`super::snapshot`]) where the real
//! destination would build the VM on KVM.
//!
//! Two ways in: the stream as raw bytes (the handshake parser, and sealed
//! frames that must fail authentication), or a described session: the
//! harness plays the source with a fixed test key, answers the Challenge,
//! seals each described frame properly (so the decoders behind the tag
//! check see them), and may then tamper with the sealed bytes, drop,
//! repeat or renumber frames.

use super::gen::Len;
use super::snapshot;
use crate::compat;
use crate::devices::relocate;
use crate::memory::{Backing, GuestMem};
use crate::migration::destination;
use crate::migration::protocol;
use crate::migration::MigrateError;
use crate::persist::Persist;
use arbitrary::Arbitrary;
use duet_abi::PAGE_SIZE;
use std::io::{Read, Write};

mod source;

use source::Source;

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
    /// The good sample state with changes.
    Sample(Box<snapshot::Tweaks>),
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

/// The destination's stream: bytes appended as the harness's source
/// "sends" them, produced when the destination has read everything so far
/// (so the source answers the Challenge the destination wrote).
struct Wire<'a> {
    buf: Vec<u8>,
    at: usize,
    /// What the destination wrote.
    back: Vec<u8>,
    src: Option<Source<'a>>,
}

impl Read for Wire<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        // Steps until something is on the wire: a dropped frame leaves a
        // gap in the frame numbers for the next one to show, as on a real
        // link; the end of the source's frames is the end of the stream.
        while self.at == self.buf.len() {
            let Some(src) = self.src.as_mut() else { break };
            if !src
                .step(&mut self.back, &mut self.buf)
                .map_err(std::io::Error::other)?
            {
                break;
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.back.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the destination on `input`.
pub fn run(input: &Input) {
    let _ = match input {
        Input::Raw(b) => receive(&mut Wire {
            buf: b.clone(),
            at: 0,
            back: Vec::new(),
            src: None,
        }),
        Input::Session(d) => session(d),
    };
}

/// Plays session `d` through the destination; its end.
pub fn session(d: &Described) -> Result<(), MigrateError> {
    let (src, hello) = Source::start(d)?;
    receive(&mut Wire {
        buf: hello,
        at: 0,
        back: Vec::new(),
        src: Some(src),
    })
}

/// `destination::receive` up to KVM, through the same handshake, pre-copy
/// and state checks; then the snapshot harness's rebuild.
fn receive(w: &mut Wire) -> Result<(), MigrateError> {
    let (hello, mut sess) = destination::handshake(w, KEY, DEST_NONCE)?;
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
    // A decoded disk run lies in its copy.
    let mut disk = |i: usize, offset: u64, data: Option<&[u8]>, len: u64| {
        assert!(i < capacities.len() && offset + len <= capacities[i]);
        assert!(data.is_none_or(|d| d.len() as u64 == len));
        Ok(())
    };
    let landing = destination::Landing {
        mem: &mem,
        capacities: &capacities,
        disk: &mut disk,
        on_sync: &mut || {},
    };
    // The source ignores acknowledgements: they go nowhere.
    let (end, blob) = destination::precopy(&mut sess, w, &mut std::io::sink(), landing)?;
    let mut state = destination::state_of(&end, &blob, &hello)?;
    let _mem = GuestMem::restore(Backing::Filled(mem), &state.memory)
        .map_err(|e| MigrateError::State(e.to_string()))?;
    state.devices =
        relocate(std::mem::take(&mut state.devices), &[], &[]).map_err(MigrateError::State)?;
    if !snapshot::rebuild(&state) {
        return Err(MigrateError::State("the state does not rebuild".into()));
    }
    Ok(())
}
