//! Structure-aware building blocks: guest addresses aimed at the regions
//! that matter (and past them), lengths at the edges, and argument blocks
//! made of 64-bit words, which is what every ABI argument struct is made of
//! (`u64` fields, or two `u32`s, or four `u16`s in a ring).

use arbitrary::Arbitrary;

/// Where a guest pointer points, in a guest of [`Layout`].
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Addr {
    /// Into the heap (mapped or not yet).
    Heap(u32),
    /// Into the stack.
    Stack(u32),
    /// Into the image's writable data.
    Data(u16),
    /// Into the virtio transport page.
    Virtio(u16),
    /// Into the monitor's own pages (tables, boot info, page tables).
    Monitor(u32),
    /// Into the image's text (read-only to the guest).
    Text(u16),
    /// Just below the end of guest memory (ranges straddle it).
    Tail(u16),
    /// Past the end of guest memory.
    Beyond(u32),
    /// Anywhere in the 64-bit space (overflowing ranges).
    Wild(u64),
}

/// The guest's layout as the harness built it.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Guest memory size.
    pub mem: u64,
    /// `[start, end)` of the heap's span (up to its limit).
    pub heap: (u64, u64),
    /// `[start, end)` of the stack.
    pub stack: (u64, u64),
    /// `[start, end)` of the image's text.
    pub text: (u64, u64),
    /// `[start, end)` of the image's data.
    pub data: (u64, u64),
}

fn within((start, end): (u64, u64), off: u64) -> u64 {
    start + off % (end - start).max(1)
}

impl Addr {
    /// The guest-physical address.
    pub fn at(self, l: &Layout) -> u64 {
        match self {
            Addr::Heap(o) => within(l.heap, o.into()),
            Addr::Stack(o) => within(l.stack, o.into()),
            Addr::Data(o) => within(l.data, o.into()),
            Addr::Virtio(o) => crate::layout::VIRTIO_PAGE + u64::from(o) % duet_abi::PAGE_SIZE,
            Addr::Monitor(o) => u64::from(o) % crate::layout::STACK_BOTTOM,
            Addr::Text(o) => within(l.text, o.into()),
            Addr::Tail(o) => l.mem.saturating_sub(1 + u64::from(o)),
            Addr::Beyond(o) => l.mem + u64::from(o),
            Addr::Wild(a) => a,
        }
    }
}

/// A length at the interesting edges.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Len {
    /// A few bytes.
    Small(u8),
    /// Whole 512-byte sectors.
    Sectors(u8),
    /// Whole pages.
    Pages(u16),
    /// Just below the largest value (end overflows).
    NearMax(u8),
    /// Anything.
    Raw(u64),
}

impl Len {
    /// The length.
    pub fn get(self) -> u64 {
        match self {
            Len::Small(n) => n.into(),
            Len::Sectors(n) => u64::from(n) * 512,
            Len::Pages(n) => u64::from(n) * duet_abi::PAGE_SIZE,
            Len::NearMax(n) => u64::MAX - u64::from(n),
            Len::Raw(n) => n,
        }
    }
}

/// One 64-bit word of an argument block.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Word {
    /// A pointer.
    Addr(Addr),
    /// A length.
    Len(Len),
    /// Two `u32` fields (device and flags, op and device, a virtio length
    /// and flags...).
    Pair(u32, u32),
    /// Two small `u32` fields (valid device numbers, ops, flags).
    SmallPair(u8, u8),
    /// Four `u16` fields (a ring's entries, a descriptor's flags and next).
    Quad(u16, u16, u16, u16),
    /// Anything.
    Raw(u64),
}

impl Word {
    /// The word's value.
    pub fn get(self, l: &Layout) -> u64 {
        match self {
            Word::Addr(a) => a.at(l),
            Word::Len(n) => n.get(),
            Word::Pair(a, b) => u64::from(a) | u64::from(b) << 32,
            Word::SmallPair(a, b) => u64::from(a) | u64::from(b) << 32,
            Word::Quad(a, b, c, d) => {
                u64::from(a) | u64::from(b) << 16 | u64::from(c) << 32 | u64::from(d) << 48
            }
            Word::Raw(v) => v,
        }
    }
}

/// Little-endian bytes of `words`.
pub fn bytes(words: &[Word], l: &Layout) -> Vec<u8> {
    words.iter().flat_map(|w| w.get(l).to_le_bytes()).collect()
}
