//! The wire protocol: frames, messages and the key handshake.
//!
//! Every frame is a 16-byte header then the payload. The three handshake
//! frames (Hello, Challenge, Auth) and a refusal during the handshake are
//! plain: kind `u8`, three zero bytes, payload length `u32`, CRC32 of kind +
//! length + payload `u32`, zero `u32`. Every frame after the handshake is
//! sealed ([`super::session`]): kind `u8`, three zero bytes, payload length
//! `u32`, frame number `u64`, then the AES-256-GCM ciphertext of the payload
//! and a [`TAG_LEN`]-byte tag. A frame longer than its kind allows, a bad
//! CRC or tag, an unexpected frame number or an unknown kind ends the
//! attempt. Control payloads are postcard-encoded structs; page payloads are
//! raw (see [`decode_pages`]). All numbers here are the protocol's single
//! source of truth; `docs/migration.md` mirrors them.

use serde::{Deserialize, Serialize};

mod frame;
mod keys;
mod payload;

pub use frame::*;
pub use keys::*;
pub use payload::*;

/// Identifies a Duet migration stream (first field of [`Hello`]).
pub const MAGIC: [u8; 8] = *b"DUETMIG\0";
/// This protocol's version; both sides must speak the same.
pub const PROTOCOL_VERSION: u32 = 3;
/// Frame header size.
pub const FRAME_HEADER: usize = 16;
/// Pages per [`Kind::Pages`] frame at most.
pub const MAX_PAGES_PER_FRAME: u64 = 256;
/// Largest control payload (hello, state chunks, ...).
pub const MAX_CONTROL_PAYLOAD: u32 = 1 << 20;
/// Largest page payload: a 16-byte run header and the pages.
pub const MAX_PAGES_PAYLOAD: u32 = PAGES_HEADER as u32 + (MAX_PAGES_PER_FRAME as u32) * 4096;
/// Largest disk run per [`Kind::Disk`] or [`Kind::DiskZero`] frame (bytes).
pub const MAX_DISK_RUN: u64 = 1 << 20;
/// Disk run header: disk `u32`, zero `u32`, offset `u64`, length `u64`.
pub const DISK_HEADER: usize = 24;
/// Disk runs are aligned to this (the smallest sector size).
pub const DISK_ALIGN: u64 = 512;
/// Largest device/vCPU state blob accepted in total (it carries the image).
pub const MAX_STATE: u64 = 256 << 20;
/// Key files: at least this many bytes of secret.
pub const MIN_KEY_LEN: usize = 16;
/// Nonce length for the challenge-response.
pub const NONCE_LEN: usize = 32;
/// The authentication tag after a sealed frame's payload.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed frame adds to its payload on the wire.
pub const SEALED_OVERHEAD: usize = FRAME_HEADER + TAG_LEN;
/// Page-run header: first page `u64`, count `u64`.
pub const PAGES_HEADER: usize = 16;
/// The handshake transcript hash starts with this (domain separation).
pub const TRANSCRIPT_LABEL: &[u8] = b"duet migration 3 transcript";
/// HKDF-Expand info for the source → destination key.
pub const KEY_LABEL_S2D: &[u8] = b"duet migration 3 source to destination";
/// HKDF-Expand info for the destination → source key.
pub const KEY_LABEL_D2S: &[u8] = b"duet migration 3 destination to source";

/// Frame kinds.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Source → destination: [`Hello`].
    Hello = 1,
    /// Destination → source: [`Challenge`].
    Challenge = 2,
    /// Source → destination: [`Auth`].
    Auth = 3,
    /// Destination → source: accepted (empty payload).
    Accept = 4,
    /// Either way: the attempt is refused or abandoned; payload is the reason (UTF-8).
    Refuse = 5,
    /// Source → destination: a run of pages (raw).
    Pages = 6,
    /// Source → destination: a run of all-zero pages (`first u64, count u64`).
    ZeroPages = 7,
    /// Source → destination: a chunk of the state blob.
    State = 8,
    /// Source → destination: end of state, [`StateEnd`]. Also the disk flush
    /// marker: no disk write issued before it is lost.
    StateEnd = 9,
    /// Destination → source: everything loaded, ready to resume (empty).
    Ready = 10,
    /// Source → destination: commit; the destination owns the guest now (empty).
    Commit = 11,
    /// Destination → source: [`CommitAck`].
    CommitAck = 12,
    /// Source → destination: end of a pre-copy round; answer when applied (empty).
    Sync = 13,
    /// Destination → source: everything before the Sync is in guest memory (empty).
    SyncAck = 14,
    /// Source → destination (`--copy-disks`): a run of disk bytes
    /// ([`disk_header`], then the bytes).
    Disk = 15,
    /// Source → destination (`--copy-disks`): a run of zero disk bytes
    /// ([`disk_header`] only).
    DiskZero = 16,
}

impl Kind {
    pub(super) fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        [
            Hello, Challenge, Auth, Accept, Refuse, Pages, ZeroPages, State, StateEnd, Ready,
            Commit, CommitAck, Sync, SyncAck, Disk, DiskZero,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }

    /// The longest payload a frame of this kind may carry.
    pub fn max_len(self) -> u32 {
        match self {
            Kind::Pages => MAX_PAGES_PAYLOAD,
            Kind::Disk => DISK_HEADER as u32 + MAX_DISK_RUN as u32,
            _ => MAX_CONTROL_PAYLOAD,
        }
    }
}

/// What the source says about the guest and itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// `duet_abi::ABI_VERSION` of the source monitor.
    pub abi: u32,
    /// CPUID vendor the guest saw.
    pub vendor: [u8; 12],
    /// CPUID feature words the guest saw.
    pub features: [u32; 6],
    /// The guest's TSC rate.
    pub tsc_khz: u64,
    /// Guest memory size.
    pub mem_size: u64,
    /// The device table, entry by entry.
    pub devices: Vec<crate::compat::DeviceSummary>,
    /// The disks' contents follow ([`Kind::Disk`]) to the destination's
    /// own copies (`--copy-disks`).
    pub copy_disks: bool,
    /// The source's challenge nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// The destination's proof and its own nonce.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Challenge {
    /// The destination's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// HMAC-SHA256(key, "dst" ‖ transcript hash after Hello ‖ destination
    /// nonce): the Hello (and so the source's nonce) is covered.
    pub mac: Vec<u8>,
}

/// The source's proof.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Auth {
    /// HMAC-SHA256(key, "src" ‖ transcript hash after Challenge): the
    /// destination knows the Hello it acts on is the source's own.
    pub mac: Vec<u8>,
}

/// Sent after the last state chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateEnd {
    /// Total state bytes.
    pub len: u64,
    /// CRC32 of the whole state blob.
    pub crc: u32,
    /// Source wall clock (ns since the epoch) when the guest was paused.
    pub paused_wall_ns: u64,
}

/// The destination's acknowledgement of commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitAck {
    /// Destination wall clock (ns since the epoch) just before resuming.
    pub resume_wall_ns: u64,
    /// Destination's own measure: state received → resume, in ns.
    pub load_ns: u64,
}
