//! Function symbols, for fault reports and backtraces.

use goblin::elf::Elf;

/// A function symbol, for symbolizing addresses in fault reports.
#[derive(Clone, Debug)]
pub struct Symbol {
    /// Start address.
    pub addr: u64,
    /// Size in bytes (0 when unknown).
    pub size: u64,
    /// Demangled name.
    pub name: String,
}

/// Describes `addr` as `function+offset` using a sorted symbol list.
pub fn symbolize(symbols: &[Symbol], addr: u64) -> Option<String> {
    let i = symbols.partition_point(|s| s.addr <= addr).checked_sub(1)?;
    let s = &symbols[i];
    let off = addr - s.addr;
    (s.size == 0 || off < s.size).then(|| format!("{}+{:#x}", s.name, off))
}

pub(super) fn read_symbols(elf: &Elf<'_>) -> Vec<Symbol> {
    let mut out: Vec<Symbol> = elf
        .syms
        .iter()
        .filter(|s| s.is_function() && s.st_value != 0)
        .filter_map(|s| {
            let name = elf.strtab.get_at(s.st_name)?;
            Some(Symbol {
                addr: s.st_value,
                size: s.st_size,
                name: format!("{:#}", rustc_demangle::demangle(name)),
            })
        })
        .collect();
    out.sort_by_key(|s| s.addr);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizes() {
        let syms = vec![
            Symbol {
                addr: 0x1000,
                size: 0x10,
                name: "a".into(),
            },
            Symbol {
                addr: 0x2000,
                size: 0,
                name: "b".into(),
            },
        ];
        assert_eq!(symbolize(&syms, 0x1004).as_deref(), Some("a+0x4"));
        assert_eq!(symbolize(&syms, 0x1010), None);
        assert_eq!(symbolize(&syms, 0x2100).as_deref(), Some("b+0x100"));
        assert_eq!(symbolize(&syms, 0x10), None);
    }
}
