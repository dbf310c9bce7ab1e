//! The hypercall target's input: guest steps the fuzzer describes.

use super::driver;
use crate::fuzzing::gen::{Addr, Word};
use arbitrary::Arbitrary;

/// A hypercall number.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Nr {
    /// One of the ABI's calls (index into [`Hypercall::ALL`]).
    Call(u8),
    /// A virtio doorbell (device number).
    Doorbell(u8),
    /// Any port offset.
    Raw(u16),
}

/// The argument pointer in `eax`.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Value {
    /// Where one of this step's writes went (index, modulo their count).
    Write(u8),
    /// Anywhere.
    At(Addr),
    /// A raw 32-bit value (a device number for `VirtioStatus`).
    Raw(u32),
}

/// Words the guest writes at an address before its call.
#[derive(Arbitrary, Clone, Debug)]
pub struct GuestWrite {
    /// Where.
    pub at: Addr,
    /// What.
    pub words: Vec<Word>,
}

/// One guest step.
#[derive(Arbitrary, Clone, Debug)]
pub enum Step {
    /// Words written, then a call.
    Call {
        /// Memory the guest writes first.
        writes: Vec<GuestWrite>,
        /// The call.
        nr: Nr,
        /// Its argument.
        value: Value,
    },
    /// The virtio disk's queue set up as a driver would.
    Setup(driver::Setup),
    /// Requests on the virtio disk's queue, and the doorbell.
    Kick(driver::Kick),
}

/// A fuzz input: a template run or not, then the guest's steps.
#[derive(Arbitrary, Clone, Debug)]
pub struct Input {
    /// Making a template (the snapshot point stops the guest).
    pub template: bool,
    /// The steps.
    pub steps: Vec<Step>,
}
