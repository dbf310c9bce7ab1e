//! The `--disk PATH[,ro][,name=NAME][,sector=512|4096][,transport=virtio|hypercall]` option: parsing it,
//! and opening and checking the file before KVM is touched (exists, is a
//! regular file or block device, sized in whole sectors, not attached
//! writable twice, not locked by another monitor).

use super::BlockDevice;
use duet_abi::boot::MAX_DEVICES;
use std::fs::OpenOptions;
use std::io::{ErrorKind, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use thiserror::Error;

/// Sector size when `--disk` does not say.
pub const DEFAULT_SECTOR: u32 = 512;
/// Longest device name (the boot info's name field).
pub const NAME_MAX: usize = 32;

/// One `--disk` option, parsed but not yet opened.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskSpec {
    /// The image file (or host block device).
    pub path: PathBuf,
    /// Attach read-only.
    pub readonly: bool,
    /// The name the guest sees (`disk<N>` when not given).
    pub name: Option<String>,
    /// Sector size: 512 or 4096.
    pub sector_size: u32,
    /// How the guest reaches it.
    pub transport: crate::devices::Transport,
}

/// Why a disk cannot be attached.
#[derive(Debug, Error)]
pub enum BlockError {
    /// Malformed `--disk` value.
    #[error("--disk `{spec}`: {why}; the syntax is PATH[,ro][,name=NAME][,sector=512|4096][,transport=virtio|hypercall]")]
    BadSpec {
        /// The option as given.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// The file does not exist.
    #[error("disk {0}: no such file; create the image first, e.g. `truncate -s 64M {0}`")]
    Missing(String),
    /// The path is a directory.
    #[error("disk {0} is a directory; give a raw image file")]
    Directory(String),
    /// Neither a regular file nor a block device.
    #[error("disk {0} is not a regular file or a block device; give a raw image file")]
    NotFile(String),
    /// Opening was refused.
    #[error("disk {path}: permission denied opening it {mode}; fix its permissions{hint}")]
    Permission {
        /// The path.
        path: String,
        /// "read-write" or "read-only".
        mode: &'static str,
        /// How to get around it.
        hint: &'static str,
    },
    /// Any other failure to open or size the file.
    #[error("cannot open disk {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Zero bytes.
    #[error("disk {0} is empty; give it a size, e.g. `truncate -s 64M {0}`")]
    Empty(String),
    /// Size not a multiple of the sector size.
    #[error("disk {path} is {size} bytes, not a multiple of its {sector}-byte sector size; resize it, e.g. `truncate -s {fix} {path}`")]
    Size {
        /// The path.
        path: String,
        /// Its size.
        size: u64,
        /// The sector size.
        sector: u32,
        /// The next valid size.
        fix: u64,
    },
    /// The same file attached twice, at least once writable.
    #[error("disk {first} and disk {second} are the same file, attached writable; a file may be attached writable only once (attach every copy `,ro` to share it)")]
    Duplicate {
        /// The first path.
        first: String,
        /// The second path.
        second: String,
    },
    /// Two disks with one name.
    #[error("two disks are named `{0}`; give each a unique `,name=`")]
    DuplicateName(String),
    /// Another process holds a conflicting lock.
    #[error("disk {0} is in use by another process; stop it, or attach the disk `,ro` everywhere")]
    Locked(String),
    /// More devices than the boot info holds.
    #[error("too many devices; the guest's device table holds at most {MAX_DEVICES}")]
    TooMany,
}

/// Parses one `--disk` value (syntax only; the file is checked by [`open_all`]).
pub fn parse_spec(s: &str) -> Result<DiskSpec, BlockError> {
    let bad = |why: String| BlockError::BadSpec {
        spec: s.into(),
        why,
    };
    let mut parts = s.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(bad("no file path".into()));
    }
    let mut spec = DiskSpec {
        path: path.into(),
        readonly: false,
        name: None,
        sector_size: DEFAULT_SECTOR,
        transport: Default::default(),
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => spec.readonly = true,
            None if opt == "rw" => spec.readonly = false,
            Some(("name", n)) => {
                if n.is_empty() || n.len() > NAME_MAX || n.contains('\0') {
                    return Err(bad(format!(
                        "name `{n}` must be 1 to {NAME_MAX} bytes without NUL"
                    )));
                }
                spec.name = Some(n.into());
            }
            Some(("sector", v)) => {
                spec.sector_size = match v {
                    "512" => 512,
                    "4096" => 4096,
                    _ => return Err(bad(format!("sector size `{v}` is not 512 or 4096"))),
                }
            }
            Some(("transport", t)) => {
                spec.transport = crate::devices::Transport::parse(t)
                    .ok_or_else(|| bad(format!("transport `{t}` is not virtio or hypercall")))?
            }
            _ => return Err(bad(format!("unknown option `{opt}`"))),
        }
    }
    Ok(spec)
}

/// Opens and checks every disk, in order; the guest sees them as devices
/// `first_id..`. Fails on the first bad disk, before anything else starts.
/// Each disk is locked ([`BlockDevice::lock`]).
pub fn open_all(specs: &[DiskSpec], first_id: usize) -> Result<Vec<BlockDevice>, BlockError> {
    open_checked(specs, first_id, true)
}

pub(super) fn open_checked(
    specs: &[DiskSpec],
    first_id: usize,
    lock: bool,
) -> Result<Vec<BlockDevice>, BlockError> {
    if first_id + specs.len() > MAX_DEVICES {
        return Err(BlockError::TooMany);
    }
    let mut out: Vec<(BlockDevice, (u64, u64))> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("disk{}", first_id + i));
        let (dev, id) = open_one(spec, name)?;
        for (other, other_id) in &out {
            if *other_id == id && (!other.readonly() || !dev.readonly()) {
                return Err(BlockError::Duplicate {
                    first: other.path().into(),
                    second: dev.path().into(),
                });
            }
            if other.name() == dev.name() {
                return Err(BlockError::DuplicateName(dev.name().into()));
            }
        }
        if lock {
            dev.lock_file()?;
        }
        out.push((dev, id));
    }
    Ok(out.into_iter().map(|(d, _)| d).collect())
}

/// Opens one disk; also returns its (device, inode) identity.
fn open_one(spec: &DiskSpec, name: String) -> Result<(BlockDevice, (u64, u64)), BlockError> {
    let path = spec.path.display().to_string();
    let meta = std::fs::metadata(&spec.path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => BlockError::Missing(path.clone()),
        _ => BlockError::Open {
            path: path.clone(),
            source: e,
        },
    })?;
    if meta.is_dir() {
        return Err(BlockError::Directory(path));
    }
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(BlockError::NotFile(path));
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(!spec.readonly)
        .open(&spec.path)
        .map_err(|e| match e.kind() {
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => BlockError::Permission {
                path: path.clone(),
                mode: if spec.readonly {
                    "read-only"
                } else {
                    "read-write"
                },
                hint: if spec.readonly {
                    ""
                } else {
                    " or attach it `,ro`"
                },
            },
            _ => BlockError::Open {
                path: path.clone(),
                source: e,
            },
        })?;
    // Seeking to the end sizes regular files and block devices alike.
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|source| BlockError::Open {
            path: path.clone(),
            source,
        })?;
    let sector = spec.sector_size;
    if size == 0 {
        return Err(BlockError::Empty(path));
    }
    if size % u64::from(sector) != 0 {
        return Err(BlockError::Size {
            path,
            size,
            sector,
            fix: size.next_multiple_of(u64::from(sector)),
        });
    }
    let mut dev = BlockDevice::new(file, path, name, spec.readonly, size, sector);
    dev.transport = spec.transport;
    Ok((dev, (meta.dev(), meta.ino())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s = parse_spec("a.img").unwrap();
        assert_eq!(
            (s.readonly, s.name, s.sector_size),
            (false, None, DEFAULT_SECTOR)
        );
        assert_eq!(
            parse_spec("a,transport=hypercall").unwrap().transport,
            crate::devices::Transport::Hypercall
        );
        let s = parse_spec("/x/a.img,ro,name=data,sector=4096").unwrap();
        assert_eq!(s.path, PathBuf::from("/x/a.img"));
        assert_eq!(
            (s.readonly, s.name.as_deref(), s.sector_size),
            (true, Some("data"), 4096)
        );
        for bad in [
            "",
            ",ro",
            "a,rx",
            "a,sector=1024",
            "a,name=",
            "a,name=123456789012345678901234567890123",
            "a,transport=mmio",
        ] {
            assert!(
                matches!(parse_spec(bad), Err(BlockError::BadSpec { .. })),
                "{bad}"
            );
        }
    }
}
