//! The snapshot state file, from bytes to a guest's rebuilt structures:
//! what `Snapshot::open` and `Vmm::assemble` do with a `state` file
//! (and a migration destination with the state blob) up to the point where
//! KVM is needed. The checks are the monitor's own ([`crate::vmm::state::check`]);
//! the harness then builds what assemble builds from a state that passed
//! (guest memory, page tables, the clock, the identity, virtio queues).
//!
//! Checked besides "no panic": a state that passes leaves the guest no
//! write access, through the monitor, to the monitor's pages or the
//! image's text.

use crate::clock::{ClockArgs, GuestClock};
use crate::devices::virtio::transport;
use crate::devices::{relocate, DeviceState};
use crate::identity::{Identity, IdentityArgs};
use crate::layout;
use crate::memory::{Backing, GuestMem};
use crate::persist::Persist;
use crate::snapshot::memfile::{self, MemIndex};
use crate::statefile::{Header, StateFile, Tag, FORMAT_VERSION};
use crate::vmm::{guest, state, VmmState};
use arbitrary::Arbitrary;
use std::time::Instant;

mod spec;
mod tweaks;

pub use spec::{sample, sample_cpu, sample_image, Device, HeapRecord, Queue, Spec};
pub use tweaks::{PageQueue, Tweaks};

/// Largest guest the harness maps (bigger sizes take the same paths).
const MAX_MAPPED: u64 = 64 << 20;

/// A fuzz input.
#[derive(Arbitrary, Clone, Debug)]
pub enum Input {
    /// A state file as bytes.
    Raw(Vec<u8>),
    /// Sections of any tag and payload, with good checksums.
    Sections(Vec<(u8, Vec<u8>)>),
    /// A state built from a description, sections then patched (with
    /// good checksums again).
    State(Box<Spec>, Vec<(u8, u16, u8)>),
    /// The good [`sample`] state with changes, then patched likewise.
    Sample(Box<Tweaks>, Vec<(u8, u16, u8)>),
}

/// The state file's bytes for `input`.
pub fn bytes(input: &Input) -> Vec<u8> {
    let header = Header {
        format_version: FORMAT_VERSION,
        abi_version: duet_abi::ABI_VERSION,
        vendor: *b"AuthenticAMD",
        features: [0; 6],
        tsc_khz: 2_000_000,
        snapshot_id: 1,
    };
    match input {
        Input::Raw(b) => b.clone(),
        Input::Sections(s) => StateFile {
            header,
            sections: s
                .iter()
                .take(70)
                .map(|(t, p)| (u32::from(*t), p.clone()))
                .collect(),
        }
        .encode(),
        Input::State(spec, patches) => patched(spec, patches),
        Input::Sample(t, patches) => patched(&t.spec(), patches),
    }
}

/// `spec`'s state file with its sections patched (checksums made good).
fn patched(spec: &Spec, patches: &[(u8, u16, u8)]) -> Vec<u8> {
    let mut f = spec.sections();
    for &(sec, at, v) in patches {
        let n = f.sections.len();
        let payload = &mut f.sections[usize::from(sec) % n].1;
        if !payload.is_empty() {
            let len = payload.len();
            payload[usize::from(at) % len] = v;
        }
    }
    f.encode()
}

/// Decodes and checks a state file, and rebuilds from it what
/// `Vmm::assemble` does before KVM.
pub fn run(input: &Input) {
    restore(&bytes(input));
}

/// [`run`] on bytes; whether the state passed every check and rebuilt.
pub fn restore(bytes: &[u8]) -> bool {
    // `Snapshot::open`.
    let Ok(file) = StateFile::decode(bytes, "fuzz") else {
        return false;
    };
    let Ok(index) = file.get::<MemIndex>(Tag::MemoryIndex) else {
        return false;
    };
    let Ok(mut st) = file.to_state() else {
        return false;
    };
    if index.size != st.memory.size {
        return false;
    }
    // `memfile::map`, for a memory file holding what the index says.
    let pages = index
        .ranges
        .iter()
        .fold(0u64, |n, r| n.wrapping_add(r.pages));
    let _ = memfile::validate_index(&index, st.memory.size, pages);
    // Devices come back as `relocate` leaves them.
    let Ok(devices) = relocate(std::mem::take(&mut st.devices), &[], &[]) else {
        return false;
    };
    st.devices = devices;
    rebuild(&st)
}

/// `Vmm::assemble` up to KVM, on a state that passed `Snapshot::open`;
/// whether the state passed every check.
pub(super) fn rebuild(st: &VmmState) -> bool {
    let Ok(c) = state::check(st) else {
        return false;
    };
    if st.memory.size > MAX_MAPPED {
        return false;
    }
    let Ok(mut mem) = GuestMem::restore(Backing::Fresh, &st.memory) else {
        return false;
    };
    mem.set_writable(c.heap.writable_ranges());
    let Ok(_pt) = guest::map(&mem, &c.image, &c.heap) else {
        return false;
    };
    guest::write_privileged(&mem).expect("the monitor's own pages are in guest memory");
    let _ = GuestClock::restore(
        ClockArgs::now(&mem, c.tsc_at_save, 0, Instant::now()),
        &st.clock,
    );
    let _ = Identity::restore(
        IdentityArgs {
            mem: &mem,
            clone_index: Some(1),
        },
        &st.monitor.identity,
    );
    let io = mem.io_mem();
    for d in &st.devices {
        match d {
            DeviceState::VirtioBlock(_, t) => {
                let _ = transport::restore_queues(t, 1, &io);
            }
            DeviceState::VirtioNet(_, t) => {
                let _ = transport::restore_queues(t, 2, &io);
            }
            _ => {}
        }
    }
    // No write access for the guest to the monitor's pages or the text.
    for &(s, e) in mem.writable() {
        assert!(
            s >= layout::STACK_BOTTOM,
            "a restored guest may have the monitor write {s:#x}..{e:#x}, in the monitor's pages"
        );
        for seg in c.image.segments.iter().filter(|seg| !seg.perms.write) {
            assert!(
                e <= seg.start || s >= seg.end,
                "a restored guest may have the monitor write {s:#x}..{e:#x}, over the image's read-only {:#x}..{:#x}",
                seg.start,
                seg.end
            );
        }
    }
    true
}
