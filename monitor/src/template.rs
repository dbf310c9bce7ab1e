//! The template store: named snapshots taken at a guest's ready point.
//!
//! A template is a snapshot directory `STORE/NAME`. The store defaults to
//! `$XDG_DATA_HOME/duet/templates` (`~/.local/share/duet/templates`): each
//! user has their own, and root is not needed. Directories the store
//! creates are private to the user (0700), as snapshots are.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// A template-store problem.
#[derive(Debug, Error)]
pub enum TemplateError {
    /// Bad name.
    #[error("`{0}` is not a template name; use letters, digits, `-`, `_` and `.` (not first), at most 64")]
    BadName(String),
    /// No such template.
    #[error("no template `{name}` in {store}; create it with `duet template create {name} IMAGE`")]
    Missing {
        /// Name.
        name: String,
        /// Store.
        store: String,
    },
    /// Already there.
    #[error("template `{name}` already exists in {store}; remove it first with `duet template rm {name}`")]
    Exists {
        /// Name.
        name: String,
        /// Store.
        store: String,
    },
    /// No store location.
    #[error("cannot find the template store: neither XDG_DATA_HOME nor HOME is set; pass --store DIR (a directory this user may write)")]
    NoStore,
    /// File error.
    #[error("template store {path}: {source}{hint}")]
    Io {
        /// Path.
        path: String,
        /// Error.
        source: std::io::Error,
        /// The remedy when the store was refused to this user (or nothing).
        hint: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.display().to_string(),
        hint: crate::access::denied_hint(
            &source,
            "pass --store DIR (a directory this user may write) or set XDG_DATA_HOME",
        ),
        source,
    }
}

/// The store: `given`, else the user's data directory.
pub fn store(given: Option<&Path>) -> Result<PathBuf, TemplateError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let data = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").ok_or(TemplateError::NoStore)?)
            .join(".local/share"),
    };
    Ok(data.join("duet/templates"))
}

/// Checks a template name.
pub fn check_name(name: &str) -> Result<(), TemplateError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(TemplateError::BadName(name.into()))
    }
}

/// Where a new template `name` goes; creates the store.
pub fn new_path(store: &Path, name: &str) -> Result<PathBuf, TemplateError> {
    check_name(name)?;
    crate::access::create_dir_all(store).map_err(io(store))?;
    let p = store.join(name);
    if p.symlink_metadata().is_ok() {
        return Err(TemplateError::Exists {
            name: name.into(),
            store: store.display().to_string(),
        });
    }
    Ok(p)
}

/// The snapshot directory of template `name`.
pub fn path(store: &Path, name: &str) -> Result<PathBuf, TemplateError> {
    check_name(name)?;
    let p = store.join(name);
    let state = p.join(crate::snapshot::STATE_FILE);
    match state.metadata() {
        Ok(m) if m.is_file() => {}
        // Not "missing" when this user may not look: say who was refused.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(io(&p)(e)),
        _ => {
            return Err(TemplateError::Missing {
                name: name.into(),
                store: store.display().to_string(),
            })
        }
    }
    Ok(p)
}

/// One listed template.
pub struct Listed {
    /// Name.
    pub name: String,
    /// Bytes on disk (state + memory files).
    pub bytes: u64,
}

/// The templates in `store`, by name.
pub fn list(store: &Path) -> Result<Vec<Listed>, TemplateError> {
    let rd = match std::fs::read_dir(store) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(store)(e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if check_name(&name).is_err() || !e.path().join(crate::snapshot::STATE_FILE).is_file() {
            continue;
        }
        let size = |f: &str| e.path().join(f).metadata().map_or(0, |m| m.len());
        out.push(Listed {
            bytes: size(crate::snapshot::STATE_FILE) + size(crate::snapshot::MEMORY_FILE),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes template `name`.
pub fn remove(store: &Path, name: &str) -> Result<(), TemplateError> {
    let p = path(store, name)?;
    std::fs::remove_dir_all(&p).map_err(io(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["web", "a.b-c_d", "x1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "sp ace", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
