//! The keyspace: string keys to string values with optional expiry times.
//!
//! Keys live in a `BTreeMap` under an 8-byte big-endian hash prefix, so the
//! map is ordered by hash first. That gives `SCAN` a stable integer cursor
//! (the next hash to visit) with Redis's guarantee: a key present for a
//! whole iteration is returned, whatever is added or removed meanwhile.
//! Equal hashes still order by the key itself, so colliding keys cost a
//! comparison, never a failure. Expiry times are wall-clock milliseconds
//! (they go into the log as they are, so a restart keeps them); an index
//! ordered by time finds the keys due without scanning.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::ops::Deref;

/// Bytes of the hash prefix.
const PREFIX: usize = 8;

/// One value.
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// Wall-clock ms at which the key expires; 0: never.
    pub expire_at: u64,
}

/// A key with its hash prefix, on the stack when short.
enum Full {
    Stack([u8; 128], usize),
    Heap(Vec<u8>),
}

impl Deref for Full {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Full::Stack(b, n) => &b[..*n],
            Full::Heap(v) => v,
        }
    }
}

/// The keyspace and its counters.
pub struct Db {
    map: BTreeMap<Box<[u8]>, Entry>,
    /// `(expire_at, full key)` of every key with an expiry.
    expires: BTreeSet<(u64, Box<[u8]>)>,
    seed: u64,
    /// What the live data takes as log records (see `record_size`).
    live_bytes: u64,
    /// Keys removed because their time passed.
    pub expired: u64,
}

/// Murmur3's 64-bit finalizer.
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The log-record size of a key and value (see `record.rs`): what
/// compaction would write for it.
pub fn record_size(key: usize, value: usize) -> u64 {
    (crate::record::HEADER + crate::record::SET_FIXED + key + value) as u64
}

impl Db {
    /// An empty keyspace whose hashes are keyed by `seed`.
    pub fn new(seed: u64) -> Db {
        Db {
            map: BTreeMap::new(),
            expires: BTreeSet::new(),
            seed,
            live_bytes: 0,
            expired: 0,
        }
    }

    /// Never 0: cursor 0 means "start" and "done".
    fn hash(&self, key: &[u8]) -> u64 {
        let mut h = self.seed ^ (key.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for chunk in key.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(w))
                .wrapping_mul(0xbf58_476d_1ce4_e5b9)
                .rotate_left(31);
        }
        fmix(h).max(1)
    }

    fn full(&self, key: &[u8]) -> Full {
        let h = self.hash(key).to_be_bytes();
        if key.len() <= 128 - PREFIX {
            let mut b = [0u8; 128];
            b[..PREFIX].copy_from_slice(&h);
            b[PREFIX..PREFIX + key.len()].copy_from_slice(key);
            Full::Stack(b, PREFIX + key.len())
        } else {
            let mut v = Vec::with_capacity(PREFIX + key.len());
            v.extend_from_slice(&h);
            v.extend_from_slice(key);
            Full::Heap(v)
        }
    }

    /// Number of keys (those due to expire but not yet removed included,
    /// as in Redis).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Number of keys with an expiry.
    pub fn expires_len(&self) -> usize {
        self.expires.len()
    }

    /// What the live data takes as log records.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    fn remove_full(&mut self, fk: &[u8]) -> bool {
        match self.map.remove(fk) {
            Some(e) => {
                if e.expire_at != 0 {
                    self.expires.remove(&(e.expire_at, Box::from(fk)));
                }
                self.live_bytes -= record_size(fk.len() - PREFIX, e.value.len());
                true
            }
            None => false,
        }
    }

    /// Removes `fk` if its time has passed; returns whether it is (still)
    /// there.
    fn live(&mut self, fk: &[u8], now_ms: u64) -> bool {
        let due = match self.map.get(fk) {
            None => return false,
            Some(e) => e.expire_at != 0 && e.expire_at <= now_ms,
        };
        if due {
            self.remove_full(fk);
            self.expired += 1;
        }
        !due
    }

    /// The entry of `key`, unless absent or expired.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        let fk = self.full(key);
        if !self.live(&fk, now_ms) {
            return None;
        }
        self.map.get(&*fk)
    }

    /// Whether `key` exists.
    pub fn contains(&mut self, key: &[u8], now_ms: u64) -> bool {
        let fk = self.full(key);
        self.live(&fk, now_ms)
    }

    /// Sets `key` to `value`, expiring at `expire_at` (0: never).
    pub fn set(&mut self, key: &[u8], value: Vec<u8>, expire_at: u64) {
        let fk = self.full(key);
        self.live_bytes += record_size(key.len(), value.len());
        if let Some(e) = self.map.get_mut(&*fk) {
            // Overwrite in place: one tree walk for the common case.
            self.live_bytes -= record_size(key.len(), e.value.len());
            let old = core::mem::replace(&mut e.expire_at, expire_at);
            e.value = value;
            if old != expire_at {
                if old != 0 {
                    self.expires.remove(&(old, Box::from(&*fk)));
                }
                if expire_at != 0 {
                    self.expires.insert((expire_at, Box::from(&*fk)));
                }
            }
            return;
        }
        let fk: Box<[u8]> = Box::from(&*fk);
        if expire_at != 0 {
            self.expires.insert((expire_at, fk.clone()));
        }
        self.map.insert(fk, Entry { value, expire_at });
    }

    /// Removes `key`; returns whether it existed (and had not expired).
    pub fn del(&mut self, key: &[u8], now_ms: u64) -> bool {
        let fk = self.full(key);
        self.live(&fk, now_ms) && self.remove_full(&fk)
    }

    /// Changes the expiry of an existing `key` (0: never); returns whether
    /// the key exists.
    pub fn set_expire(&mut self, key: &[u8], expire_at: u64, now_ms: u64) -> bool {
        let fk = self.full(key);
        if !self.live(&fk, now_ms) {
            return false;
        }
        let Some(e) = self.map.get_mut(&*fk) else {
            return false;
        };
        let old = core::mem::replace(&mut e.expire_at, expire_at);
        if old != 0 {
            self.expires.remove(&(old, Box::from(&*fk)));
        }
        if expire_at != 0 {
            self.expires.insert((expire_at, Box::from(&*fk)));
        }
        true
    }

    /// Removes every key.
    pub fn flush(&mut self) {
        self.map.clear();
        self.expires.clear();
        self.live_bytes = 0;
    }

    /// Removes up to `max` keys whose time has passed; returns how many.
    pub fn sweep(&mut self, now_ms: u64, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some((at, fk)) = self.expires.first() else {
                break;
            };
            if *at > now_ms {
                break;
            }
            let fk = fk.clone();
            self.remove_full(&fk);
            self.expired += 1;
            n += 1;
        }
        n
    }

    /// Every live key and entry, in hash order.
    pub fn iter(&self, now_ms: u64) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.map
            .iter()
            .filter(move |(_, e)| e.expire_at == 0 || e.expire_at > now_ms)
            .map(|(k, e)| (&k[PREFIX..], e))
    }

    /// One `SCAN` step from `cursor`: visits about `count` keys, passes the
    /// live ones to `f`, and returns the next cursor (0 when done). Keys
    /// sharing the last visited hash are visited together, so a cursor
    /// never splits them.
    pub fn scan(&self, cursor: u64, count: usize, now_ms: u64, mut f: impl FnMut(&[u8])) -> u64 {
        let from: Box<[u8]> = Box::from(&cursor.to_be_bytes()[..]);
        let mut last: Option<[u8; PREFIX]> = None;
        for (visited, (fk, e)) in self.map.range(from..).enumerate() {
            let h: [u8; PREFIX] = fk[..PREFIX].try_into().unwrap_or([0; PREFIX]);
            if visited >= count && last != Some(h) {
                return u64::from_be_bytes(h);
            }
            if e.expire_at == 0 || e.expire_at > now_ms {
                f(&fk[PREFIX..]);
            }
            last = Some(h);
        }
        0
    }
}
