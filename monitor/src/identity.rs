//! Who the guest is: its generation (restores so far) and clone index,
//! published with a fresh random seed in the identity page, plus what the
//! host asks of it (a shutdown request). Saved through [`Persist`]: a
//! restore bumps the generation and draws a new seed, so clones of one
//! snapshot never share their random state.

use crate::bootinfo;
use crate::layout;
use crate::memory::{GuestMem, MemError};
use crate::persist::{Persist, StateError};
use duet_abi::identity::{IdentityPage, REQUEST_SHUTDOWN};
use duet_abi::Gpa;
use serde::{Deserialize, Serialize};

/// The guest's identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// 0 at cold boot; bumped by each restore.
    pub generation: u64,
    /// This guest's index among clones started together.
    pub clone_index: u32,
}

impl Identity {
    /// Publishes the identity with a fresh seed and no requests.
    pub fn publish(&self, mem: &GuestMem) -> Result<(), MemError> {
        let page = IdentityPage {
            seq: 0,
            clone_index: self.clone_index,
            generation: self.generation,
            seed: bootinfo::random_seed(),
            requests: 0,
        };
        bootinfo::write_identity(mem, &page)
    }

    /// Asks the guest to shut down (`REQUEST_SHUTDOWN`); the field only
    /// gains bits, so it needs no seqlock.
    pub fn request_shutdown(mem: &GuestMem) -> Result<(), MemError> {
        let at = Gpa(layout::IDENTITY_PAGE + std::mem::offset_of!(IdentityPage, requests) as u64);
        let cur: u64 = mem.read_plain(at)?;
        mem.write_monitor_plain(at, &(cur | REQUEST_SHUTDOWN))
    }
}

/// What a restored identity is: in `mem`, as clone `clone_index` (the
/// saved one when `None`).
pub struct IdentityArgs<'a> {
    /// Guest memory.
    pub mem: &'a GuestMem,
    /// The clone index to give the guest.
    pub clone_index: Option<u32>,
}

impl Persist for Identity {
    type State = Identity;
    type ConstructorArgs<'a> = IdentityArgs<'a>;
    type Error = StateError;

    fn save(&self) -> Result<Identity, StateError> {
        Ok(*self)
    }

    fn restore(a: IdentityArgs<'_>, s: &Identity) -> Result<Identity, StateError> {
        let id = Identity {
            generation: s.generation.wrapping_add(1),
            clone_index: a.clone_index.unwrap_or(s.clone_index),
        };
        id.publish(a.mem)
            .map_err(|e| StateError::Invalid(format!("writing the identity page: {e}")))?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_bumps_the_generation_and_reseeds() {
        let mem = GuestMem::new(8 << 20).unwrap();
        let id = Identity {
            generation: 2,
            clone_index: 5,
        };
        id.publish(&mem).unwrap();
        Identity::request_shutdown(&mem).unwrap();
        let before: IdentityPage = mem.read_plain(Gpa(layout::IDENTITY_PAGE)).unwrap();
        assert_eq!(before.requests, REQUEST_SHUTDOWN);
        let args = IdentityArgs {
            mem: &mem,
            clone_index: Some(9),
        };
        let back = Identity::restore(args, &id.save().unwrap()).unwrap();
        assert_eq!((back.generation, back.clone_index), (3, 9));
        let after: IdentityPage = mem.read_plain(Gpa(layout::IDENTITY_PAGE)).unwrap();
        assert_eq!(
            (after.generation, after.clone_index, after.requests),
            (3, 9, 0)
        );
        assert_ne!(after.seed, before.seed);
    }
}
