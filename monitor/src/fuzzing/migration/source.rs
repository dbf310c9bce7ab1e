//! The harness playing the source: each described frame's payload built,
//! sealed properly, then put on the wire tampered with as described.

use super::{Described, FrameSpec, Payload, Tamper, DEST_NONCE, KEY, SOURCE_NONCE};
use crate::compat::DeviceSummary;
use crate::migration::protocol::{self, Auth, Hello, Kind, StateEnd};
use crate::migration::session::{Role, Session, Transcript};
use crate::migration::MigrateError;
use duet_abi::PAGE_SIZE;

/// The harness's source: its handshake transcript, then its session and
/// the frames still to send.
pub(super) struct Source<'a> {
    d: &'a Described,
    t: Transcript,
    session: Option<Session>,
    next: usize,
    /// The state bytes sealed so far (what an honest end describes).
    state: Vec<u8>,
}

impl<'a> Source<'a> {
    /// The source of `d`, and its Hello on the wire.
    pub(super) fn start(d: &'a Described) -> Result<(Self, Vec<u8>), MigrateError> {
        let h = &d.hello;
        // The CPU the described states' vCPUs report.
        let (vendor, features) = crate::fuzzing::snapshot::sample_cpu();
        let hello = Hello {
            magic: if h.current {
                protocol::MAGIC
            } else {
                *b"DUETMIG\x01"
            },
            protocol: protocol::PROTOCOL_VERSION - u32::from(!h.current),
            abi: duet_abi::ABI_VERSION,
            vendor,
            features,
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
        let mut t = Transcript::default();
        let mut wire = Vec::new();
        t.send(&mut wire, Kind::Hello, &hello)?;
        let src = Source {
            d,
            t,
            session: None,
            next: 0,
            state: Vec::new(),
        };
        Ok((src, wire))
    }

    /// Answers what the destination wrote to `back` (the Challenge: check
    /// it and prove the key, wrongly unless the session says otherwise), or
    /// puts the next frame on `wire` (which may put nothing there: a
    /// dropped frame); whether anything was left to do.
    pub(super) fn step(
        &mut self,
        back: &mut Vec<u8>,
        wire: &mut Vec<u8>,
    ) -> Result<bool, MigrateError> {
        let Some(session) = self.session.as_mut() else {
            self.t.recv(&mut &back[..])?.expect(Kind::Challenge)?;
            back.clear();
            let mut mac = protocol::mac(KEY, b"src", &self.t.hash(), &[]);
            if !self.d.auth {
                mac[0] ^= 1;
            }
            self.t.send(wire, Kind::Auth, &Auth { mac })?;
            self.session = Some(Session::new(
                KEY,
                Role::Source,
                &SOURCE_NONCE,
                &DEST_NONCE,
                &self.t.hash(),
            ));
            return Ok(true);
        };
        // Acknowledgements are not looked at.
        back.clear();
        let Some(f) = self.d.frames.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
        send(session, wire, f, &mut self.state)?;
        Ok(true)
    }
}

/// Every frame kind, by number.
const KINDS: [Kind; 16] = [
    Kind::Hello,
    Kind::Challenge,
    Kind::Auth,
    Kind::Accept,
    Kind::Refuse,
    Kind::Pages,
    Kind::ZeroPages,
    Kind::State,
    Kind::StateEnd,
    Kind::Ready,
    Kind::Commit,
    Kind::CommitAck,
    Kind::Sync,
    Kind::SyncAck,
    Kind::Disk,
    Kind::DiskZero,
];

/// Mostly the kinds that exist; the rest of the bytes as they come.
fn kind(k: u8) -> Option<Kind> {
    if k < 0x80 {
        Some(KINDS[usize::from(k) % KINDS.len()])
    } else {
        KINDS.iter().copied().find(|x| *x as u8 == k)
    }
}

fn payload(p: &Payload, blob: &[u8]) -> Vec<u8> {
    match p {
        Payload::Raw(b) => b.clone(),
        Payload::Pages(first, count, data) => {
            let mut v = protocol::pages_header(u64::from(*first), count.get()).to_vec();
            v.resize(v.len() + usize::from(*data) * PAGE_SIZE as usize, 0x5a);
            v
        }
        Payload::Run(first, count) => {
            protocol::pages_header(u64::from(*first), count.get()).to_vec()
        }
        Payload::Disk(disk, off, len, data) => {
            let mut v = protocol::disk_header(*disk, off.get(), len.get()).to_vec();
            v.resize(v.len() + usize::from(*data), 0xd1);
            v
        }
        Payload::State(spec) => spec.sections().encode(),
        Payload::Sample(t) => t.spec().sections().encode(),
        Payload::End(honest, crc, len) => {
            let end = if *honest {
                StateEnd {
                    len: blob.len() as u64,
                    crc: crc32fast::hash(blob),
                    paused_wall_ns: 0,
                }
            } else {
                StateEnd {
                    len: *len,
                    crc: *crc,
                    paused_wall_ns: 0,
                }
            };
            postcard::to_stdvec(&end).unwrap_or_default()
        }
    }
}

/// The source seals frame `f` and puts it on the wire, tampered with as
/// described.
fn send(
    source: &mut Session,
    wire: &mut Vec<u8>,
    f: &FrameSpec,
    state: &mut Vec<u8>,
) -> Result<(), MigrateError> {
    let own = match f.payload {
        Payload::Raw(_) => Kind::Sync,
        Payload::Pages(..) => Kind::Pages,
        Payload::Run(..) => Kind::ZeroPages,
        Payload::Disk(_, _, _, 0) => Kind::DiskZero,
        Payload::Disk(..) => Kind::Disk,
        Payload::State(_) | Payload::Sample(_) => Kind::State,
        Payload::End(..) => Kind::StateEnd,
    };
    let Some(k) = f.kind.map_or(Some(own), kind) else {
        // An unknown kind: a frame header nobody could seal.
        wire.extend_from_slice(&protocol::sealed_header(Kind::Sync, 0, 0));
        let at = wire.len() - protocol::FRAME_HEADER;
        wire[at] = f.kind.unwrap_or_default();
        return Ok(());
    };
    let p = payload(&f.payload, state);
    if k == Kind::State {
        state.extend_from_slice(&p);
    }
    let mut sealed = Vec::new();
    if source.write(&mut sealed, k, &p).is_err() {
        return Ok(());
    }
    match f.tamper {
        Tamper::None => wire.extend_from_slice(&sealed),
        Tamper::Byte(at, v) => {
            let n = sealed.len();
            sealed[usize::from(at) % n] ^= v.max(1);
            wire.extend_from_slice(&sealed);
        }
        Tamper::Cut(n) => {
            let keep = usize::from(n) % sealed.len();
            wire.extend_from_slice(&sealed[..keep]);
        }
        Tamper::Twice => {
            wire.extend_from_slice(&sealed);
            wire.extend_from_slice(&sealed);
        }
        Tamper::Drop => {}
    }
    Ok(())
}
