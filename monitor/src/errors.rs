//! Printing an error with its causes, each said once.
//!
//! The monitor's error types carry their cause both in their message (so a
//! message stands alone, e.g. in a control-socket answer) and as their
//! `source` (so callers can inspect it). Printing the whole chain would
//! then repeat the cause; [`chain`] skips a cause whose text is already in
//! what was printed.

/// `e` and its causes, joined by `": "`, with repeats left out.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !t.is_empty() && !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[from] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("quiet outer")]
    struct Quiet(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {0}: {1}")]
    struct Embeds(&'static str, #[source] std::io::Error);

    #[test]
    fn os_errors_appear_once() {
        let e = Embeds("x", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            chain(&e),
            "cannot read x: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn causes_appear_once() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(chain(&e), "outer: disk full");
        let e = Quiet(std::io::Error::other("disk full"));
        assert_eq!(chain(&e), "quiet outer: disk full");
    }
}
