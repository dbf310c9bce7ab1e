//! Log records: what one write did, checksummed and chained.
//!
//! A record is `crc u32 | len u32 | payload` (little endian), the payload a
//! kind byte and its fields:
//!
//! | kind | fields |
//! |---|---|
//! | 1 `SET` | key length u32, expiry u64 (wall-clock ms, 0 never), key, value |
//! | 2 `DEL` | key |
//! | 3 `EXPIRE` | expiry u64 (0: persist), key |
//! | 4 `FLUSHALL` | — |
//! | 5 `GROUP` | count u32, then per record: payload length u32, payload |
//!
//! A command that writes several keys (`MSET`, `DEL a b`) logs one `GROUP`,
//! so a crash leaves all of it or none, as in Redis.
//!
//! The CRC covers the previous record's CRC, the length and the payload,
//! and the first record's "previous CRC" comes from the log's nonce (see
//! [`seed`]). The chain is what makes replay stop in the right place: a
//! stale record beyond the end (from an older log in the same region, a
//! failed compaction, or a group commit torn half-way and later written
//! over) was chained to a different predecessor, so it does not verify.

use crate::crc::crc32;
use alloc::vec::Vec;

/// Bytes of the record header.
pub const HEADER: usize = 8;
/// Bytes of a `SET` payload besides key and value.
pub const SET_FIXED: usize = 1 + 4 + 8;

const SET: u8 = 1;
const DEL: u8 = 2;
const EXPIRE: u8 = 3;
const FLUSHALL: u8 = 4;
const GROUP: u8 = 5;

/// One logged write.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    /// The key now holds this value (and expiry, 0: none).
    Set {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// Wall-clock ms, 0: never.
        expire_at: u64,
    },
    /// The key is gone.
    Del {
        /// Key.
        key: &'a [u8],
    },
    /// The key's expiry changed (0: none).
    Expire {
        /// Key.
        key: &'a [u8],
        /// Wall-clock ms, 0: never.
        at: u64,
    },
    /// Every key is gone.
    FlushAll,
    /// Records applied together (a parsed `GROUP`: its checked body).
    Group(&'a [u8]),
}

/// Fills in the header of the record written at `at`: its length, and its
/// CRC chained to `prev` (returned).
fn seal(out: &mut [u8], at: usize, prev: u32) -> u32 {
    let len = ((out.len() - at - HEADER) as u32).to_le_bytes();
    let crc = crc32(&[&prev.to_le_bytes(), &len, &out[at + HEADER..]]);
    out[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&len);
    crc
}

/// The records of a `GROUP` body (after the kind byte), each parsed;
/// `None` inside the iterator for a malformed one.
pub fn members(body: &[u8]) -> impl Iterator<Item = Option<Record<'_>>> {
    let n = le32(body, 0).unwrap_or(0);
    let mut at = 4;
    (0..n).map(move |_| {
        let len = le32(body, at)? as usize;
        let p = body.get(at + 4..at + 4 + len)?;
        at += 4 + len;
        match Record::parse(p)? {
            // Groups do not nest.
            Record::Group(_) => None,
            r => Some(r),
        }
    })
}

/// The chain's start for a log with `nonce`.
pub fn seed(nonce: u64) -> u32 {
    crc32(&[b"kvd-log", &nonce.to_le_bytes()])
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> Record<'a> {
    /// Appends the record chained to `prev`; returns its CRC (the next
    /// record's `prev`).
    pub fn append(&self, out: &mut Vec<u8>, prev: u32) -> u32 {
        let at = out.len();
        out.extend_from_slice(&[0; HEADER]);
        self.payload(out);
        seal(out, at, prev)
    }

    /// Appends `recs` as one `GROUP` record chained to `prev`; returns its
    /// CRC.
    pub fn append_group(recs: &[Record], out: &mut Vec<u8>, prev: u32) -> u32 {
        let at = out.len();
        out.extend_from_slice(&[0; HEADER]);
        out.push(GROUP);
        out.extend_from_slice(&(recs.len() as u32).to_le_bytes());
        for r in recs {
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            r.payload(out);
            let len = (out.len() - len_at - 4) as u32;
            out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        }
        seal(out, at, prev)
    }

    fn payload(&self, out: &mut Vec<u8>) {
        match *self {
            Record::Set {
                key,
                value,
                expire_at,
            } => {
                out.push(SET);
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(&expire_at.to_le_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(value);
            }
            Record::Del { key } => {
                out.push(DEL);
                out.extend_from_slice(key);
            }
            Record::Expire { key, at } => {
                out.push(EXPIRE);
                out.extend_from_slice(&at.to_le_bytes());
                out.extend_from_slice(key);
            }
            Record::FlushAll => out.push(FLUSHALL),
            Record::Group(body) => {
                out.push(GROUP);
                out.extend_from_slice(body);
            }
        }
    }

    /// The payload's length from a header, if the header is plausible.
    pub fn payload_len(header: &[u8], max: usize) -> Option<usize> {
        let len = le32(header, 4)? as usize;
        (1..=max).contains(&len).then_some(len)
    }

    /// Checks a whole record (header and payload) against `prev`; returns
    /// the record and its CRC.
    pub fn verify(rec: &'a [u8], prev: u32) -> Option<(Record<'a>, u32)> {
        let crc = le32(rec, 0)?;
        let (len, payload) = (rec.get(4..HEADER)?, rec.get(HEADER..)?);
        if crc32(&[&prev.to_le_bytes(), len, payload]) != crc {
            return None;
        }
        Some((Record::parse(payload)?, crc))
    }

    fn parse(p: &'a [u8]) -> Option<Record<'a>> {
        match *p.first()? {
            SET => {
                let klen = le32(p, 1)? as usize;
                let expire_at = le64(p, 5)?;
                let rest = p.get(SET_FIXED..)?;
                Some(Record::Set {
                    key: rest.get(..klen)?,
                    value: rest.get(klen..)?,
                    expire_at,
                })
            }
            DEL => Some(Record::Del { key: &p[1..] }),
            EXPIRE => Some(Record::Expire {
                at: le64(p, 1)?,
                key: p.get(9..)?,
            }),
            FLUSHALL if p.len() == 1 => Some(Record::FlushAll),
            GROUP if le32(p, 1).is_some() && members(&p[1..]).all(|m| m.is_some()) => {
                Some(Record::Group(&p[1..]))
            }
            _ => None,
        }
    }
}
