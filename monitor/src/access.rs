//! Who may touch what the monitor writes, and what to say when it may not
//! touch a path.
//!
//! Snapshots, templates, memory files and core files hold the guest's
//! memory (its keys and data), so the monitor makes them private to the
//! user it runs as: directories 0700, files 0600 (narrower still under a
//! stricter umask). The
//! monitor needs no root (`docs/security.md`, "Least privilege"), so a
//! path it is denied is usually one of another user's: [`denied_hint`]
//! says so and names the remedy.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of the directories the monitor creates for guest data.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files the monitor creates for guest data.
pub const FILE_MODE: u32 = 0o600;

/// Creates directory `path` (not its parents) private to this user.
pub fn create_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Creates `path` and whichever of its parents are missing, each created
/// one private to this user (existing ones keep their mode).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Options that create a new file (never an existing one) private to this
/// user, open for writing.
pub fn new_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true).mode(FILE_MODE);
    o
}

/// The effective user id the monitor runs as.
pub fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// For an error of opening or creating a path: when it is a refusal
/// (`EACCES`, `EPERM`), a remedy that starts with `"; "` and says which
/// user was refused; otherwise nothing.
pub fn denied_hint(e: &io::Error, what: &str) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => format!("; duet runs as uid {}: {what}", uid()),
        _ => String::new(),
    }
}

/// The usual remedy for a path the monitor must create something in.
pub const WRITABLE: &str = "give a path in a directory this user may write";
/// The usual remedy for a path the monitor must read.
pub const READABLE: &str = "give a path this user may read";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private() {
        let base = std::env::temp_dir().join(format!("duet-access-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let deep = base.join("a/b");
        create_dir_all(&deep).unwrap();
        create_dir(&base.join("c")).unwrap();
        new_file().open(deep.join("f")).unwrap();
        assert_eq!(mode(&base.join("a")), DIR_MODE);
        assert_eq!(mode(&deep), DIR_MODE);
        assert_eq!(mode(&base.join("c")), DIR_MODE);
        assert_eq!(mode(&deep.join("f")), FILE_MODE);
        // Never an existing file.
        assert!(new_file().open(deep.join("f")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn only_refusals_get_a_hint() {
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let h = denied_hint(&denied, WRITABLE);
        assert!(h.starts_with("; duet runs as uid"), "{h}");
        assert!(h.contains(WRITABLE), "{h}");
        let missing = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(denied_hint(&missing, WRITABLE), "");
    }
}
