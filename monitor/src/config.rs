//! What `duet run` was asked to boot.

use std::path::PathBuf;
use thiserror::Error;

/// A VM's configuration, validated.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The image file.
    pub image: PathBuf,
    /// Guest memory in bytes.
    pub mem: u64,
    /// Arguments passed to the guest.
    pub args: Vec<String>,
    /// `KEY=VALUE` environment entries.
    pub env: Vec<String>,
    /// The KVM device node.
    pub kvm_device: PathBuf,
    /// Disks (`--disk`), in device-table order.
    pub disks: Vec<crate::devices::block::DiskSpec>,
    /// `--net` devices, in device-table order after any others.
    pub net: Vec<crate::devices::net::NetConfig>,
}

/// A malformed `--mem` or `--env` value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Unparseable size.
    #[error("`{0}` is not a memory size; use a number with an optional unit, e.g. 64M, 512MiB, 2G (a bare number means MiB)")]
    BadSize(String),
    /// Size below the minimum.
    #[error("memory size {0} is too small; the minimum is {min} MiB", min = crate::layout::MIN_MEM >> 20)]
    TooSmall(String),
    /// Size above the maximum.
    #[error("memory size {0} is too large; the maximum is {max} GiB{host}", max = crate::layout::MAX_MEM >> 30, host = .1)]
    TooLarge(String, String),
    /// Not a multiple of 2 MiB.
    #[error("memory size {0} is not a multiple of 2 MiB (guest memory is mapped with 2 MiB pages); try {1}M")]
    Unaligned(String, u64),
    /// `--env` without `=`.
    #[error("--env `{0}` is not KEY=VALUE")]
    BadEnv(String),
}

/// Parses a memory size: `64M`, `512MiB`, `2G`, `4096K`; a bare number is MiB.
pub fn parse_mem(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| ConfigError::BadSize(s.into()))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        _ => return Err(ConfigError::BadSize(s.into())),
    };
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| ConfigError::TooLarge(s.into(), String::new()))?;
    if bytes < crate::layout::MIN_MEM {
        return Err(ConfigError::TooSmall(s.into()));
    }
    if bytes > crate::layout::MAX_MEM {
        return Err(ConfigError::TooLarge(s.into(), String::new()));
    }
    let host = host_memory();
    if host > 0 && bytes > host {
        return Err(ConfigError::TooLarge(
            s.into(),
            format!(" and this host has only {} MiB", host >> 20),
        ));
    }
    if bytes % duet_abi::LARGE_PAGE_SIZE != 0 {
        return Err(ConfigError::Unaligned(
            s.into(),
            bytes.div_ceil(duet_abi::LARGE_PAGE_SIZE) * 2,
        ));
    }
    Ok(bytes)
}

/// Checks an `--env` entry.
pub fn parse_env(s: &str) -> Result<String, ConfigError> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(ConfigError::BadEnv(s.into())),
    }
}

/// Physical memory of the host in bytes (0 if unknown).
fn host_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mem("64M"), Ok(64 << 20));
        assert_eq!(parse_mem("64"), Ok(64 << 20));
        assert_eq!(parse_mem("1GiB"), Ok(1 << 30));
        assert_eq!(parse_mem("8192k"), Ok(8 << 20));
        assert!(matches!(parse_mem("lots"), Err(ConfigError::BadSize(_))));
        assert!(matches!(parse_mem("-5M"), Err(ConfigError::BadSize(_))));
        assert!(matches!(parse_mem("1M"), Err(ConfigError::TooSmall(_))));
        assert!(matches!(parse_mem("1000G"), Err(ConfigError::TooLarge(..))));
        assert!(matches!(
            parse_mem("99999999999999999999G"),
            Err(ConfigError::BadSize(_))
        ));
        assert!(matches!(parse_mem("5M"), Err(ConfigError::Unaligned(..))));
    }

    #[test]
    fn env() {
        assert!(parse_env("A=b").is_ok());
        assert!(parse_env("A=").is_ok());
        assert!(parse_env("=b").is_err());
        assert!(parse_env("nope").is_err());
    }
}
