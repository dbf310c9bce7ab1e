//! The harness playing the source: each described frame's payload built,
//! sealed properly, then put on the wire tampered with as described.

use super::{FrameSpec, Payload, Tamper, Wire};
use crate::migration::protocol::{self, Kind, StateEnd};
use crate::migration::session::Session;
use crate::migration::MigrateError;
use duet_abi::PAGE_SIZE;

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
pub(super) fn send(
    source: &mut Session,
    w: &mut Wire,
    f: &FrameSpec,
    blob: &[u8],
) -> Result<(), MigrateError> {
    let own = match f.payload {
        Payload::Raw(_) => Kind::Sync,
        Payload::Pages(..) => Kind::Pages,
        Payload::Run(..) => Kind::ZeroPages,
        Payload::Disk(_, _, _, 0) => Kind::DiskZero,
        Payload::Disk(..) => Kind::Disk,
        Payload::State(_) => Kind::State,
        Payload::End(..) => Kind::StateEnd,
    };
    let Some(k) = f.kind.map_or(Some(own), kind) else {
        // An unknown kind: a frame header nobody could seal.
        w.buf
            .extend_from_slice(&protocol::sealed_header(Kind::Sync, 0, 0));
        let at = w.buf.len() - protocol::FRAME_HEADER;
        w.buf[at] = f.kind.unwrap_or_default();
        return Ok(());
    };
    let p = payload(&f.payload, blob);
    let mut sealed = Vec::new();
    if source.write(&mut sealed, k, &p).is_err() {
        return Ok(());
    }
    match f.tamper {
        Tamper::None => w.buf.extend_from_slice(&sealed),
        Tamper::Byte(at, v) => {
            let n = sealed.len();
            sealed[usize::from(at) % n] ^= v.max(1);
            w.buf.extend_from_slice(&sealed);
        }
        Tamper::Cut(n) => {
            let keep = usize::from(n) % sealed.len();
            w.buf.extend_from_slice(&sealed[..keep]);
        }
        Tamper::Twice => {
            w.buf.extend_from_slice(&sealed);
            w.buf.extend_from_slice(&sealed);
        }
        Tamper::Drop => {}
    }
    Ok(())
}
