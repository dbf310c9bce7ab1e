//! The destination's pre-copy: sealed frames until the state's end, page
//! runs into guest memory, disk runs into the copies, state chunks into
//! one blob; then the blob checked against its end and the Hello and
//! decoded. Generic over the stream so the fuzzer drives this same code.

use super::state_err;
use crate::memory::GuestMem;
use crate::migration::protocol::{self, Hello, Kind, StateEnd};
use crate::migration::session::Session;
use crate::migration::MigrateError;
use crate::statefile::StateFile;
use crate::vmm::VmmState;
use duet_abi::{Gpa, PAGE_SIZE};
use std::io::{Read, Write};

/// Writes a disk run: copy, offset, bytes (`None`: that many zeros), length.
pub(crate) type DiskWrite<'a> =
    &'a mut dyn FnMut(usize, u64, Option<&[u8]>, u64) -> Result<(), MigrateError>;

/// Where the pre-copy lands what arrives.
pub(crate) struct Landing<'a> {
    /// Guest memory, filled run by run.
    pub mem: &'a GuestMem,
    /// The `--copy-disks` copies' sizes (empty: every disk run is refused).
    pub capacities: &'a [u64],
    /// Where disk runs go.
    pub disk: DiskWrite<'a>,
    /// Called on each Sync before it is acknowledged (a test hook's place).
    pub on_sync: &'a mut dyn FnMut(),
}

/// Receives frames from `r` (acknowledging syncs on `w`) until the state's
/// end; the end and the state blob.
pub(crate) fn precopy(
    sess: &mut Session,
    r: &mut impl Read,
    w: &mut impl Write,
    at: Landing<'_>,
) -> Result<(StateEnd, Vec<u8>), MigrateError> {
    let pages = at.mem.size() / PAGE_SIZE;
    let mut blob = Vec::new();
    // One payload buffer goes round: no allocation per frame.
    let mut spare = Vec::new();
    let zero_page = [0u8; PAGE_SIZE as usize];
    loop {
        let f = sess.read_into(r, std::mem::take(&mut spare))?;
        match f.kind {
            Kind::Pages | Kind::ZeroPages => {
                let zero = f.kind == Kind::ZeroPages;
                let (first, count, data) = protocol::decode_pages(&f.payload, pages, zero)?;
                if zero {
                    for p in first..first + count {
                        at.mem
                            .write_bytes(Gpa(p * PAGE_SIZE), &zero_page)
                            .map_err(state_err)?;
                    }
                } else {
                    at.mem
                        .write_bytes(Gpa(first * PAGE_SIZE), data)
                        .map_err(state_err)?;
                }
                spare = f.payload;
            }
            Kind::Disk | Kind::DiskZero => {
                let zero = f.kind == Kind::DiskZero;
                let (i, offset, len, data) =
                    protocol::decode_disk(&f.payload, at.capacities, zero)?;
                (at.disk)(i, offset, (!zero).then_some(data), len)?;
                spare = f.payload;
            }
            Kind::State => {
                if blob.len() as u64 + f.payload.len() as u64 > protocol::MAX_STATE {
                    return Err(MigrateError::Protocol("guest state too large".into()));
                }
                blob.extend_from_slice(&f.payload);
            }
            Kind::StateEnd => return Ok((f.decode()?, blob)),
            Kind::Sync => {
                (at.on_sync)();
                sess.write(w, Kind::SyncAck, &[])?
            }
            _ => {
                f.expect(Kind::StateEnd)?;
            }
        }
    }
}

/// The state `blob` as its `end` and the `hello` describe it: length and
/// checksum, the CPU and ABI the Hello named, the memory size.
pub(crate) fn state_of(
    end: &StateEnd,
    blob: &[u8],
    hello: &Hello,
) -> Result<VmmState, MigrateError> {
    if end.len != blob.len() as u64 || end.crc != crc32fast::hash(blob) {
        return Err(MigrateError::Protocol(
            "guest state length or checksum mismatch".into(),
        ));
    }
    let file = StateFile::decode(blob, "the incoming state").map_err(state_err)?;
    let h = &file.header;
    if (h.abi_version, h.vendor, h.features, h.tsc_khz)
        != (hello.abi, hello.vendor, hello.features, hello.tsc_khz)
    {
        return Err(MigrateError::Protocol(
            "the state disagrees with the hello".into(),
        ));
    }
    let state = file.to_state().map_err(state_err)?;
    if state.memory.size != hello.mem_size {
        return Err(MigrateError::Protocol("the memory state is invalid".into()));
    }
    Ok(state)
}
