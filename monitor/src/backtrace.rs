//! Frame-pointer backtraces of a stopped guest, for fault and panic reports.
//!
//! Guests are built with `-C force-frame-pointers=yes`, so every frame
//! starts with `push rbp; mov rbp, rsp`: `[rbp]` holds the caller's `rbp`
//! and `[rbp + 8]` the return address. The chain is guest data, so it is
//! hostile input: every read goes through the page tables as ring 3 would
//! see them ([`vmem`]), each frame must lie above the last (stacks grow
//! down), return addresses must point into executable pages, and the walk
//! stops after [`MAX_FRAMES`]. A chain that breaks ends the trace with the
//! reason, never the report.

use crate::loader::Symbol;
use crate::memory::GuestMem;
use crate::vmem;
use std::fmt::Write;

/// Most frames printed.
pub const MAX_FRAMES: usize = 32;

/// One frame: where execution is (frame 0) or will return to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The instruction pointer (frame 0) or return address.
    pub pc: u64,
    /// `function+offset`, demangled, when a symbol covers it.
    pub symbol: Option<String>,
}

/// How the walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// A zero frame pointer or return address: the outermost frame.
    Outermost,
    /// [`MAX_FRAMES`] reached.
    Truncated,
    /// The chain is unusable from here; the text says why.
    Broken(String),
}

/// A walked chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backtrace {
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Why it ended.
    pub end: End,
}

/// Names `pc` for a frame: a return address is looked up one byte back, in
/// the call instruction (a call to a function that never returns may be
/// the last instruction of its function), but the offset shown is the
/// return address's.
fn name(symbols: &[Symbol], pc: u64, is_return: bool) -> Option<String> {
    let probe = if is_return { pc.checked_sub(1)? } else { pc };
    let i = symbols
        .partition_point(|s| s.addr <= probe)
        .checked_sub(1)?;
    let s = &symbols[i];
    let off = probe - s.addr;
    (s.size == 0 || off < s.size).then(|| format!("{}+{:#x}", s.name, pc - s.addr))
}

/// Walks the frame-pointer chain from `rip` and `rbp`.
pub fn walk(mem: &GuestMem, symbols: &[Symbol], rip: u64, rbp: u64) -> Backtrace {
    let mut frames = vec![Frame {
        pc: rip,
        symbol: name(symbols, rip, false),
    }];
    let mut fp = rbp;
    let end = loop {
        if fp == 0 {
            break End::Outermost;
        }
        if frames.len() >= MAX_FRAMES {
            break End::Truncated;
        }
        if fp % 8 != 0 {
            break End::Broken(format!("frame pointer {fp:#x} is not 8-byte aligned"));
        }
        let (next, ret) = match (
            vmem::read_u64(mem, fp),
            fp.checked_add(8).map(|a| vmem::read_u64(mem, a)),
        ) {
            (Ok(n), Some(Ok(r))) => (n, r),
            (Err(e), _) | (_, Some(Err(e))) => {
                break End::Broken(format!("frame pointer {fp:#x}: {e}"))
            }
            (_, None) => break End::Broken(format!("frame pointer {fp:#x} wraps around")),
        };
        if ret == 0 {
            break End::Outermost;
        }
        if !vmem::page(mem, ret).is_some_and(|p| p.user_text()) {
            break End::Broken(format!(
                "return address {ret:#x} at {:#x} is not in the guest's text",
                fp + 8
            ));
        }
        frames.push(Frame {
            pc: ret,
            symbol: name(symbols, ret, true),
        });
        // The caller's frame lies above this one; anything else would loop.
        if next != 0 && next <= fp {
            break End::Broken(format!(
                "saved frame pointer {next:#x} at {fp:#x} does not lead up the stack"
            ));
        }
        fp = next;
    };
    Backtrace { frames, end }
}

impl Backtrace {
    /// The report's lines: `#N 0xADDR function+offset`, then why the walk
    /// stopped if not at the outermost frame.
    pub fn render(&self, indent: &str) -> String {
        let mut s = String::new();
        for (i, f) in self.frames.iter().enumerate() {
            let _ = write!(
                s,
                "\n{indent}#{i:<2} {:#x} {}",
                f.pc,
                f.symbol.as_deref().unwrap_or("<no symbol>")
            );
        }
        match &self.end {
            End::Outermost => {}
            End::Truncated => {
                let _ = write!(s, "\n{indent}... (stopped after {MAX_FRAMES} frames)");
            }
            End::Broken(why) => {
                let _ = write!(s, "\n{indent}(the frame chain ends here: {why})");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{Access, PageTables};
    use duet_abi::Gpa;

    fn sym(addr: u64, size: u64, name: &str) -> Symbol {
        Symbol {
            addr,
            size,
            name: name.into(),
        }
    }

    fn guest() -> GuestMem {
        let mem = GuestMem::new(8 << 20).unwrap();
        let mut pt = PageTables::new(&mem).unwrap();
        pt.map_4k(&mem, 0x20_0000, 0x20_1000, Access::UserExec)
            .unwrap();
        pt.map_4k(&mem, 0x10_0000, 0x10_4000, Access::UserWrite)
            .unwrap();
        mem
    }

    fn put(mem: &GuestMem, at: u64, v: u64) {
        mem.write_bytes(Gpa(at), &v.to_le_bytes()).unwrap();
    }

    #[test]
    fn walks_a_chain_to_the_outermost_frame() {
        let mem = guest();
        let syms = [
            sym(0x20_0000, 0x100, "leaf"),
            sym(0x20_0100, 0x100, "mid"),
            sym(0x20_0200, 0x100, "top"),
        ];
        // leaf's frame at 0x10_1000 -> mid's at 0x10_2000 -> top's at 0x10_3000 -> 0.
        put(&mem, 0x10_1000, 0x10_2000);
        put(&mem, 0x10_1008, 0x20_0150);
        put(&mem, 0x10_2000, 0x10_3000);
        // A call that is the last instruction of `mid`: the return address
        // is the next function's first byte, but the frame is still `mid`'s.
        put(&mem, 0x10_2008, 0x20_0200);
        put(&mem, 0x10_3000, 0);
        put(&mem, 0x10_3008, 0);
        let bt = walk(&mem, &syms, 0x20_0010, 0x10_1000);
        assert_eq!(bt.end, End::Outermost);
        let names: Vec<_> = bt
            .frames
            .iter()
            .map(|f| f.symbol.clone().unwrap())
            .collect();
        assert_eq!(names, ["leaf+0x10", "mid+0x50", "mid+0x100"]);
        assert!(bt.render("  ").contains("#1  0x200150 mid+0x50"));
    }

    #[test]
    fn a_corrupt_chain_ends_the_walk_cleanly() {
        let mem = guest();
        let syms = [sym(0x20_0000, 0x100, "f")];
        for (rbp, setup, why) in [
            (0xdead_beef_u64, vec![], "not 8-byte aligned"),
            (0x4141_4141_4141_4140, vec![], "not mapped"),
            (0x1000, vec![], "not mapped"),
            (u64::MAX - 7, vec![], "wraps around"),
            (
                0x10_1000,
                vec![(0x10_1000, 0x10_2000), (0x10_1008, 0x10_2000)],
                "not in the guest's text",
            ),
            (
                0x10_1000,
                vec![(0x10_1000, 0x10_1000), (0x10_1008, 0x20_0010)],
                "does not lead up the stack",
            ),
            (
                0x10_1000,
                vec![(0x10_1000, 0x10_0000), (0x10_1008, 0x20_0010)],
                "does not lead up the stack",
            ),
        ] {
            for (a, v) in setup {
                put(&mem, a, v);
            }
            let bt = walk(&mem, &syms, 0x20_0004, rbp);
            match &bt.end {
                End::Broken(s) => assert!(s.contains(why), "rbp {rbp:#x}: {s}"),
                e => panic!("rbp {rbp:#x}: {e:?}"),
            }
            assert_eq!(bt.frames[0].symbol.as_deref(), Some("f+0x4"));
            assert!(bt.render("").contains("the frame chain ends here"));
        }
    }

    #[test]
    fn a_looping_chain_is_bounded() {
        let mem = guest();
        // Every frame points one word higher: never outermost, always "up".
        for i in 0..512u64 {
            put(&mem, 0x10_1000 + 16 * i, 0x10_1000 + 16 * (i + 1));
            put(&mem, 0x10_1008 + 16 * i, 0x20_0010);
        }
        let bt = walk(&mem, &[], 0x20_0000, 0x10_1000);
        assert_eq!(bt.end, End::Truncated);
        assert_eq!(bt.frames.len(), MAX_FRAMES);
    }
}
