//! Frames on the wire: the plain handshake frames (CRC-checked) and the
//! header of sealed frames (the layout is in the parent module).

use super::{Kind, FRAME_HEADER};
use crate::migration::MigrateError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};

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
}
