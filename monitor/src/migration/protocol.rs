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

use super::MigrateError;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::{Read, Write};

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

/// One frame read off the wire.
#[derive(Debug)]
pub struct Frame {
    /// Its kind.
    pub kind: Kind,
    /// Its payload.
    pub payload: Vec<u8>,
}

fn crc(kind: u8, payload: &[u8]) -> u32 {
    crc_parts(kind, &[payload])
}

fn crc_parts(kind: u8, parts: &[&[u8]]) -> u32 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(&(len as u32).to_le_bytes());
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Writes one frame (header and payload in one buffer: one syscall).
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> Result<(), MigrateError> {
    debug_assert!(payload.len() <= kind.max_len() as usize);
    let mut buf = Vec::with_capacity(FRAME_HEADER + payload.len());
    buf.push(kind as u8);
    buf.extend_from_slice(&[0; 3]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc(kind as u8, payload).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(payload);
    w.write_all(&buf).map_err(MigrateError::Connection)
}

/// A message's postcard encoding, as a `kind` frame carries it.
pub fn encode<T: Serialize>(kind: Kind, msg: &T) -> Result<Vec<u8>, MigrateError> {
    postcard::to_stdvec(msg)
        .map_err(|e| MigrateError::Protocol(format!("cannot encode {kind:?}: {e}")))
}

/// Writes a postcard-encoded message in a plain frame.
pub fn send<T: Serialize>(w: &mut impl Write, kind: Kind, msg: &T) -> Result<(), MigrateError> {
    write_frame(w, kind, &encode(kind, msg)?)
}

/// Checks what plain and sealed headers share: a known kind, zero reserved
/// bytes, a length within the kind's limit (before anything is allocated).
fn check_header(h: &[u8; FRAME_HEADER]) -> Result<(Kind, u32), MigrateError> {
    let kind = Kind::from_u8(h[0])
        .ok_or_else(|| MigrateError::Protocol(format!("unknown frame kind {}", h[0])))?;
    if h[1..4] != [0; 3] {
        return Err(MigrateError::Protocol("malformed frame header".into()));
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > kind.max_len() {
        return Err(MigrateError::Protocol(format!(
            "{kind:?} frame of {len} bytes exceeds the limit of {}",
            kind.max_len()
        )));
    }
    Ok((kind, len))
}

/// A sealed frame's header: kind, length, frame number. It is also the
/// frame's associated data, so none of it can change unnoticed.
pub fn sealed_header(kind: Kind, len: u32, number: u64) -> [u8; FRAME_HEADER] {
    let mut h = [0u8; FRAME_HEADER];
    h[0] = kind as u8;
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..].copy_from_slice(&number.to_le_bytes());
    h
}

/// Parses a sealed frame's header: `(kind, payload length, frame number)`.
pub fn parse_sealed_header(h: &[u8; FRAME_HEADER]) -> Result<(Kind, u32, u64), MigrateError> {
    let (kind, len) = check_header(h)?;
    let number = u64::from_le_bytes(h[8..].try_into().expect("8 bytes"));
    Ok((kind, len, number))
}

/// Reads one frame, checking kind, length and CRC before trusting anything.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, MigrateError> {
    read_frame_into(r, Vec::new())
}

/// [`read_frame`] into `payload`'s allocation (the previous frame's, so a
/// stream of page frames does not allocate one buffer per frame).
pub fn read_frame_into(r: &mut impl Read, mut payload: Vec<u8>) -> Result<Frame, MigrateError> {
    let mut h = [0u8; FRAME_HEADER];
    r.read_exact(&mut h).map_err(MigrateError::Connection)?;
    let (kind, len) = check_header(&h)?;
    if h[12..16] != [0; 4] {
        return Err(MigrateError::Protocol("malformed frame header".into()));
    }
    let want = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    payload.clear();
    payload.resize(len as usize, 0);
    r.read_exact(&mut payload)
        .map_err(MigrateError::Connection)?;
    if crc(h[0], &payload) != want {
        return Err(MigrateError::Protocol(format!(
            "{kind:?} frame checksum mismatch"
        )));
    }
    Ok(Frame { kind, payload })
}

impl Frame {
    /// Decodes the payload as `T`, refusing trailing bytes.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, MigrateError> {
        match postcard::take_from_bytes::<T>(&self.payload) {
            Ok((v, [])) => Ok(v),
            Ok(_) => Err(MigrateError::Protocol(format!(
                "{:?} frame has trailing bytes",
                self.kind
            ))),
            Err(e) => Err(MigrateError::Protocol(format!(
                "{:?} frame does not decode: {e}",
                self.kind
            ))),
        }
    }

    /// Fails unless this frame is of kind `want`; a `Refuse` becomes
    /// [`MigrateError::Refused`] with the peer's reason.
    pub fn expect(self, want: Kind) -> Result<Frame, MigrateError> {
        if self.kind == want {
            return Ok(self);
        }
        if self.kind == Kind::Refuse {
            return Err(MigrateError::Refused(refusal(&self.payload)));
        }
        Err(MigrateError::Protocol(format!(
            "expected a {want:?} frame, got {:?}",
            self.kind
        )))
    }
}

/// The peer's refusal reason, made printable.
pub fn refusal(payload: &[u8]) -> String {
    let s = String::from_utf8_lossy(&payload[..payload.len().min(1024)]);
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Encodes the header of a run of `count` pages starting at page `first`.
pub fn pages_header(first: u64, count: u64) -> [u8; PAGES_HEADER] {
    let mut h = [0u8; PAGES_HEADER];
    h[..8].copy_from_slice(&first.to_le_bytes());
    h[8..].copy_from_slice(&count.to_le_bytes());
    h
}

/// Validates a page-run payload against guest memory of `mem_pages` pages:
/// returns `(first, count, data)`. `zero` runs carry no data.
pub fn decode_pages(
    payload: &[u8],
    mem_pages: u64,
    zero: bool,
) -> Result<(u64, u64, &[u8]), MigrateError> {
    let bad = |why: &str| MigrateError::Protocol(format!("bad page run: {why}"));
    if payload.len() < PAGES_HEADER {
        return Err(bad("short header"));
    }
    let first = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    let data = &payload[PAGES_HEADER..];
    match first.checked_add(count) {
        Some(end) if end <= mem_pages && count > 0 => {}
        _ => return Err(bad("pages outside guest memory")),
    }
    let ok = count <= MAX_PAGES_PER_FRAME
        && if zero {
            data.is_empty()
        } else {
            data.len() as u64 == count * 4096
        };
    if !ok {
        return Err(bad("length does not match the page count"));
    }
    Ok((first, count, data))
}

/// A disk run's header: disk index, byte offset, byte length.
pub fn disk_header(disk: u32, offset: u64, len: u64) -> [u8; DISK_HEADER] {
    let mut h = [0u8; DISK_HEADER];
    h[..4].copy_from_slice(&disk.to_le_bytes());
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h
}

/// Checks a [`Kind::Disk`] / [`Kind::DiskZero`] payload against the disks'
/// capacities: returns (disk, offset, length, data). Every number comes
/// from the network: index in range, aligned, at most [`MAX_DISK_RUN`],
/// inside the disk, and the data exactly as long as said (none for zero).
pub fn decode_disk<'a>(
    payload: &'a [u8],
    capacities: &[u64],
    zero: bool,
) -> Result<(usize, u64, u64, &'a [u8]), MigrateError> {
    let bad = |why: &str| MigrateError::Protocol(format!("bad disk run: {why}"));
    if payload.len() < DISK_HEADER {
        return Err(bad("short header"));
    }
    let disk = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
    if payload[4..8] != [0; 4] {
        return Err(bad("reserved bytes set"));
    }
    let offset = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(payload[16..24].try_into().expect("8 bytes"));
    let data = &payload[DISK_HEADER..];
    let cap = *capacities.get(disk).ok_or_else(|| bad("no such disk"))?;
    if offset % DISK_ALIGN != 0 || len % DISK_ALIGN != 0 || len == 0 || len > MAX_DISK_RUN {
        return Err(bad("unaligned or oversized run"));
    }
    match offset.checked_add(len) {
        Some(end) if end <= cap => {}
        _ => return Err(bad("run outside the disk")),
    }
    let want = if zero { 0 } else { len };
    if data.len() as u64 != want {
        return Err(bad("length does not match the run"));
    }
    Ok((disk, offset, len, data))
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256(key, label ‖ a ‖ b) (the handshake's proofs).
pub fn mac(key: &[u8], label: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(a);
    m.update(b);
    m.finalize().into_bytes().to_vec()
}

/// Checks `tag` = HMAC-SHA256(key, label ‖ a ‖ b) in constant time.
pub fn verify(key: &[u8], label: &[u8], a: &[u8], b: &[u8], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(a);
    m.update(b);
    m.verify_slice(tag).is_ok()
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    for c in n.chunks_mut(16) {
        let s = crate::bootinfo::random_seed();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&s[0].to_le_bytes());
        b[8..].copy_from_slice(&s[1].to_le_bytes());
        c.copy_from_slice(&b[..c.len()]);
    }
    n
}

/// Reads a key file: its bytes (trailing newline dropped), at least
/// [`MIN_KEY_LEN`] of them.
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>, MigrateError> {
    let mut k = std::fs::read(path).map_err(|source| MigrateError::Key {
        path: path.display().to_string(),
        why: format!(
            "{source}{}",
            crate::access::denied_hint(&source, "give a key file this user may read")
        ),
    })?;
    while k.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        k.pop();
    }
    if k.len() < MIN_KEY_LEN {
        return Err(MigrateError::Key {
            path: path.display().to_string(),
            why: format!("it holds {} bytes; use at least {MIN_KEY_LEN} random bytes (e.g. `head -c 32 /dev/urandom | base64 > FILE`)", k.len()),
        });
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_corruption() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Refuse, b"no").unwrap();
        let f = read_frame(&mut &buf[..]).unwrap();
        assert_eq!((f.kind, &f.payload[..]), (Kind::Refuse, &b"no"[..]));
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(read_frame(&mut &b[..]).is_err(), "flip at {i} accepted");
        }
        assert!(read_frame(&mut &buf[..buf.len() - 1]).is_err());
        // An oversized length is refused before anything is allocated.
        let mut h = buf[..FRAME_HEADER].to_vec();
        h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &h[..]),
            Err(MigrateError::Protocol(_))
        ));
    }

    #[test]
    fn disk_runs_are_bounded() {
        let caps = [8192u64];
        let mut p = disk_header(0, 512, 1024).to_vec();
        p.extend_from_slice(&[1; 1024]);
        assert_eq!(decode_disk(&p, &caps, false).unwrap().1, 512);
        assert!(decode_disk(&p, &caps, true).is_err());
        assert!(decode_disk(&p, &[1024], false).is_err());
        assert!(decode_disk(&p, &[], false).is_err());
        let z = disk_header(0, 0, 8192);
        assert!(decode_disk(&z, &caps, true).is_ok());
        for h in [
            disk_header(1, 0, 512),
            disk_header(0, 100, 512),
            disk_header(0, 0, 0),
            disk_header(0, u64::MAX - 511, 512),
            disk_header(0, 0, MAX_DISK_RUN + 512),
        ] {
            assert!(decode_disk(&h, &caps, true).is_err(), "{h:?}");
        }
        let mut r = z.to_vec();
        r[5] = 1;
        assert!(decode_disk(&r, &caps, true).is_err());
    }

    #[test]
    fn page_runs_are_bounded() {
        let mut p = pages_header(2, 1).to_vec();
        p.extend_from_slice(&[7; 4096]);
        assert!(decode_pages(&p, 3, false).is_ok());
        assert!(decode_pages(&p, 2, false).is_err());
        assert!(decode_pages(&p[..100], 3, false).is_err());
        let mut big = pages_header(u64::MAX, 2).to_vec();
        big.extend_from_slice(&[0; 8192]);
        assert!(decode_pages(&big, 10, false).is_err());
        assert!(decode_pages(&pages_header(0, 5), 10, true).is_ok());
        assert!(decode_pages(&pages_header(8, 5), 10, true).is_err());
    }

    #[test]
    fn mac_needs_the_key() {
        let t = mac(b"k1k1k1k1k1k1k1k1", b"src", b"a", b"b");
        assert!(verify(b"k1k1k1k1k1k1k1k1", b"src", b"a", b"b", &t));
        assert!(!verify(b"k2k2k2k2k2k2k2k2", b"src", b"a", b"b", &t));
        assert!(!verify(b"k1k1k1k1k1k1k1k1", b"dst", b"a", b"b", &t));
    }
}
