//! A small ELF64 writer for structure-aware image inputs: header, program
//! headers, segment bytes, and sections (the Duet image header, a symbol
//! table), every field the fuzzer's to set or to get wrong, then raw byte
//! patches on top.

use super::gen::Len;
use arbitrary::Arbitrary;
use duet_abi::boot::{IMAGE_BASE, IMAGE_MAGIC};

/// Largest segment body the writer puts in the file (more is claimed, not
/// written: the loader must see it runs past the file).
const MAX_BODY: usize = 1 << 16;

/// `e_type`.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum ElfType {
    /// `ET_EXEC`.
    Exec,
    /// `ET_DYN`.
    Dyn,
    /// Anything.
    Raw(u16),
}

/// A segment's address.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Vaddr {
    /// Page `n` above the image base, plus a few bytes.
    Page(u8, u8),
    /// Anywhere.
    Raw(u64),
}

/// What a segment's file part is.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Body {
    /// This many bytes, written.
    Bytes(u16),
    /// A size claimed at an offset, nothing written for it.
    Claim(u64, u64),
}

/// One program header.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Seg {
    /// `PT_LOAD` when true; otherwise `p_type` = the byte.
    pub load: bool,
    /// `p_type` when not a load segment.
    pub ptype: u8,
    /// `p_flags` (X = 1, W = 2, R = 4).
    pub flags: u8,
    /// `p_vaddr`.
    pub vaddr: Vaddr,
    /// `p_memsz` beyond the file part (or in place of it when `None`).
    pub extra: Option<Len>,
    /// The file part.
    pub body: Body,
}

/// The `.duet.header` section.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Header {
    /// Whether the section exists.
    pub present: bool,
    /// The right magic.
    pub magic: bool,
    /// `abi_version` (`None`: this monitor's).
    pub version: Option<u32>,
    /// `sh_size` (`None`: 16).
    pub size: Option<u8>,
    /// `sh_offset` (`None`: where the bytes are).
    pub offset: Option<u64>,
}

/// A symbol.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct Sym {
    /// `st_name` (an offset into the string table, maybe past it).
    pub name: u8,
    /// `st_info` (type in the low nibble: 2 = function).
    pub info: u8,
    /// `st_value` (`Page`: in the image).
    pub value: Vaddr,
    /// `st_size`.
    pub size: u16,
}

/// A whole image, fuzzer-described.
#[derive(Arbitrary, Clone, Debug)]
pub struct ElfSpec {
    /// `e_type`.
    pub etype: ElfType,
    /// `e_machine` (`None`: x86_64).
    pub machine: Option<u16>,
    /// `e_entry`: in segment `n` at an offset, or raw.
    pub entry: Result<(u8, u16), u64>,
    /// Program headers.
    pub segs: Vec<Seg>,
    /// The Duet header section.
    pub header: Header,
    /// The symbol table.
    pub syms: Vec<Sym>,
    /// Bytes overwritten after writing (offset modulo the length).
    pub patches: Vec<(u16, u8)>,
}

fn vaddr(v: Vaddr) -> u64 {
    match v {
        Vaddr::Page(p, o) => IMAGE_BASE + u64::from(p) * 4096 + u64::from(o),
        Vaddr::Raw(a) => a,
    }
}

fn put<const N: usize>(out: &mut [u8], at: usize, v: [u8; N]) {
    out[at..at + N].copy_from_slice(&v);
}

const STRTAB: &[u8] = b"\0.duet.header\0.shstrtab\0.symtab\0.strtab\0main\0_start\0_ZN4core9panicking5panic17h0123456789abcdefE\0";

impl ElfSpec {
    /// The file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let segs = &self.segs[..self.segs.len().min(12)];
        let syms = &self.syms[..self.syms.len().min(32)];
        let phoff = 64usize;
        let mut out = vec![0u8; phoff + 56 * segs.len()];
        // Segment bodies, each page-aligned in the file.
        let mut phdrs = Vec::new();
        for s in segs {
            let (off, filesz) = match s.body {
                Body::Bytes(n) => {
                    let n = usize::from(n).min(MAX_BODY);
                    out.resize(out.len().next_multiple_of(4096), 0);
                    let off = out.len();
                    out.extend((0..n).map(|i| (i as u8) ^ 0x90));
                    (off as u64, n as u64)
                }
                Body::Claim(off, n) => (off, n),
            };
            let memsz = match s.extra {
                Some(l) => filesz.wrapping_add(l.get()),
                None => filesz,
            };
            phdrs.push((s, off, filesz, memsz));
        }
        // Sections: the Duet header, the symbol table, its strings, the
        // section names.
        let hdr_off = out.len();
        out.extend_from_slice(&IMAGE_MAGIC.to_le_bytes());
        if !self.header.magic {
            out[hdr_off] ^= 0xff;
        }
        let version = self.header.version.unwrap_or(duet_abi::ABI_VERSION);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let sym_off = out.len();
        out.extend_from_slice(&[0u8; 24]);
        for s in syms {
            let mut e = [0u8; 24];
            put(&mut e, 0, u32::from(s.name).to_le_bytes());
            e[4] = s.info;
            put(&mut e, 6, 1u16.to_le_bytes());
            put(&mut e, 8, vaddr(s.value).to_le_bytes());
            put(&mut e, 16, u64::from(s.size).to_le_bytes());
            out.extend_from_slice(&e);
        }
        let sym_len = out.len() - sym_off;
        let str_off = out.len();
        out.extend_from_slice(STRTAB);
        let shoff = out.len().next_multiple_of(8);
        out.resize(shoff, 0);
        // (name, type, offset, size, link, entsize)
        let mut shdrs: Vec<(u32, u32, u64, u64, u32, u64)> = vec![(0, 0, 0, 0, 0, 0)];
        if self.header.present {
            let size = self.header.size.map_or(16, u64::from);
            let off = self.header.offset.unwrap_or(hdr_off as u64);
            shdrs.push((1, 1, off, size, 0, 0));
        }
        let strndx = shdrs.len() as u32 + 1;
        shdrs.push((24, 2, sym_off as u64, sym_len as u64, strndx, 24));
        shdrs.push((32, 3, str_off as u64, STRTAB.len() as u64, 0, 0));
        let shstrndx = shdrs.len();
        shdrs.push((14, 3, str_off as u64, STRTAB.len() as u64, 0, 0));
        for (name, ty, off, size, link, entsize) in &shdrs {
            let mut e = [0u8; 64];
            put(&mut e, 0, name.to_le_bytes());
            put(&mut e, 4, ty.to_le_bytes());
            put(&mut e, 24, off.to_le_bytes());
            put(&mut e, 32, size.to_le_bytes());
            put(&mut e, 40, link.to_le_bytes());
            put(&mut e, 56, entsize.to_le_bytes());
            out.extend_from_slice(&e);
        }
        // The ELF header and program headers.
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // little-endian
        out[6] = 1;
        let etype = match self.etype {
            ElfType::Exec => 2,
            ElfType::Dyn => 3,
            ElfType::Raw(t) => t,
        };
        put(&mut out, 16, etype.to_le_bytes());
        put(&mut out, 18, self.machine.unwrap_or(62).to_le_bytes());
        put(&mut out, 20, 1u32.to_le_bytes());
        let entry = match self.entry {
            Ok((i, o)) => phdrs
                .get(usize::from(i) % phdrs.len().max(1))
                .map_or(IMAGE_BASE, |p| vaddr(p.0.vaddr).wrapping_add(u64::from(o))),
            Err(a) => a,
        };
        put(&mut out, 24, entry.to_le_bytes());
        put(&mut out, 32, (phoff as u64).to_le_bytes());
        put(&mut out, 40, (shoff as u64).to_le_bytes());
        put(&mut out, 52, 64u16.to_le_bytes());
        put(&mut out, 54, 56u16.to_le_bytes());
        put(&mut out, 56, (phdrs.len() as u16).to_le_bytes());
        put(&mut out, 58, 64u16.to_le_bytes());
        put(&mut out, 60, (shdrs.len() as u16).to_le_bytes());
        put(&mut out, 62, (shstrndx as u16).to_le_bytes());
        for (i, (s, off, filesz, memsz)) in phdrs.iter().enumerate() {
            let at = phoff + 56 * i;
            let ptype = if s.load { 1 } else { u32::from(s.ptype) };
            put(&mut out, at, ptype.to_le_bytes());
            put(&mut out, at + 4, u32::from(s.flags).to_le_bytes());
            put(&mut out, at + 8, off.to_le_bytes());
            put(&mut out, at + 16, vaddr(s.vaddr).to_le_bytes());
            put(&mut out, at + 24, vaddr(s.vaddr).to_le_bytes());
            put(&mut out, at + 32, filesz.to_le_bytes());
            put(&mut out, at + 40, memsz.to_le_bytes());
            put(&mut out, at + 48, 4096u64.to_le_bytes());
        }
        let n = out.len();
        for &(at, v) in &self.patches {
            out[usize::from(at) % n] = v;
        }
        out
    }
}
