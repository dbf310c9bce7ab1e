//! Snapshot directories appear whole or not at all: written into a
//! temporary sibling, fsynced, renamed into place without replacing
//! anything.

use super::SnapshotError;
use std::path::Path;

/// Creates directory `dir` atomically: `fill` writes into a temporary
/// sibling, whose files are then fsynced, and which is renamed to `dir`
/// only if `dir` still does not exist. On any error the temporary is
/// removed and nothing appears at `dir`.
pub fn write_dir<T>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    if dir.symlink_metadata().is_ok() {
        return Err(SnapshotError::Exists(dir.display().to_string()));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| SnapshotError::Invalid(format!("{} names no directory", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let tmp = parent.join(format!(
        ".{}.tmp-{}-{:x}",
        name.to_string_lossy(),
        std::process::id(),
        crate::bootinfo::random_seed()[0]
    ));
    // Private (0700): the memory file inside is the guest's memory.
    crate::access::create_dir(&tmp).map_err(|e| SnapshotError::io("creating", &tmp, e))?;
    let result = fill(&tmp).and_then(|v| {
        sync_path(&tmp)?;
        rename_noreplace(&tmp, dir)?;
        sync_path(&parent)?;
        Ok(v)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn sync_path(p: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| SnapshotError::io("syncing", p, e))
}

fn rename_noreplace(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
    let (Ok(f), Ok(t)) = (c(from), c(to)) else {
        return Err(SnapshotError::Invalid("path contains NUL".into()));
    };
    // SAFETY: both are valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Err(SnapshotError::Exists(to.display().to_string()));
        }
        return Err(SnapshotError::io("renaming into place", to, e));
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::io::Write;
    let mut f = crate::access::new_file()
        .open(path)
        .map_err(|e| SnapshotError::io("creating", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| SnapshotError::io("writing", path, e))
}
