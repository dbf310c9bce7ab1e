//! [`Persist`] for guest memory: its size and guest-writable ranges. The
//! pages themselves travel separately (a snapshot's memory file, a
//! migration's page frames), so a restore is handed the mapping to wrap.

use super::{GuestMem, Mapping};
use crate::persist::{Persist, StateError};
use duet_abi::PAGE_SIZE;
use serde::{Deserialize, Serialize};

/// Guest memory's own state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemState {
    /// Size in bytes.
    pub size: u64,
    /// Guest-writable ranges.
    pub writable: Vec<(u64, u64)>,
}

/// Where a restored guest's pages come from.
pub enum Backing {
    /// Fresh zeroed memory.
    Fresh,
    /// Memory already filled with the guest's pages (a migration
    /// destination received them before the state).
    Filled(GuestMem),
    /// A mapping already holding the pages (a snapshot's memory file mapped
    /// copy-on-write), with the ranges the file backs.
    Mapped(Mapping, Vec<(u64, u64)>),
}

impl Persist for GuestMem {
    type State = MemState;
    type ConstructorArgs<'a> = Backing;
    type Error = StateError;

    fn save(&self) -> Result<MemState, StateError> {
        Ok(MemState {
            size: self.size(),
            writable: self.writable().to_vec(),
        })
    }

    fn restore(backing: Backing, s: &MemState) -> Result<GuestMem, StateError> {
        if !(crate::layout::MIN_MEM..=crate::layout::MAX_MEM).contains(&s.size)
            || s.size % PAGE_SIZE != 0
        {
            return Err(StateError::Invalid(format!(
                "guest memory size {} is invalid",
                s.size
            )));
        }
        for &(start, end) in &s.writable {
            if start > end || end > s.size {
                return Err(StateError::Invalid(format!(
                    "writable range {start:#x}..{end:#x} is outside guest memory"
                )));
            }
        }
        let io = |what| move |source| StateError::Io { what, source };
        let mut mem = match backing {
            Backing::Fresh => GuestMem::new(s.size).map_err(io("allocating guest memory"))?,
            Backing::Filled(m) if m.size() != s.size => {
                return Err(StateError::Invalid(
                    "guest memory and the memory state disagree on its size".into(),
                ))
            }
            Backing::Filled(m) => m,
            Backing::Mapped(m, ranges) => {
                if m.len() as u64 != s.size {
                    return Err(StateError::Invalid(
                        "the memory mapping and the memory size disagree".into(),
                    ));
                }
                GuestMem::from_mapping(m, ranges).map_err(io("wrapping guest memory"))?
            }
        };
        mem.set_writable(s.writable.clone());
        Ok(mem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mut mem = GuestMem::new(8 << 20).unwrap();
        mem.set_writable(vec![(0x1000, 0x3000)]);
        let s: MemState =
            postcard::from_bytes(&postcard::to_stdvec(&mem.save().unwrap()).unwrap()).unwrap();
        let back = GuestMem::restore(Backing::Fresh, &s).unwrap();
        assert_eq!(back.writable(), mem.writable());
        assert_eq!(back.size(), 8 << 20);
        let bad = MemState {
            size: 8 << 20,
            writable: vec![(0x1000, 16 << 20)],
        };
        assert!(GuestMem::restore(Backing::Fresh, &bad).is_err());
        let odd = MemState {
            size: (8 << 20) + 1,
            writable: vec![],
        };
        assert!(GuestMem::restore(Backing::Fresh, &odd).is_err());
        let m = Mapping::anonymous(4 << 20).unwrap();
        assert!(GuestMem::restore(Backing::Mapped(m, vec![]), &s).is_err());
    }
}
