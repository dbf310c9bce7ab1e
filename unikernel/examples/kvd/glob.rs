//! Glob patterns as Redis's `KEYS`, `SCAN MATCH` and `CONFIG GET` read
//! them: `*` any run, `?` any byte, `[abc]`, `[^a]`, `[a-z]` sets, `\x`
//! a literal `x`. Every token but `*` matches exactly one byte, so the
//! classic two-pointer matcher with one backtrack point is exact and runs
//! in O(pattern × text) without recursion (no stack to exhaust).

/// Whether the set starting at `p[0] == b'['` matches `c`; returns the
/// verdict and the pattern index just past the set.
fn set(p: &[u8], c: u8) -> (bool, usize) {
    let mut i = 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    loop {
        match p.get(i) {
            // An unterminated set ends with the pattern (as Redis reads it).
            None => break,
            Some(b']') => {
                i += 1;
                break;
            }
            Some(b'\\') if i + 1 < p.len() => {
                hit |= p[i + 1] == c;
                i += 2;
            }
            Some(&lo) if p.get(i + 1) == Some(&b'-') && i + 2 < p.len() => {
                let hi = p[i + 2];
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                hit |= (lo..=hi).contains(&c);
                i += 3;
            }
            Some(&x) => {
                hit |= x == c;
                i += 1;
            }
        }
    }
    (hit != negate, i)
}

/// Whether the token at `p[pi]` (not `*`) matches `c`; returns the verdict
/// and the index of the next token.
fn one(p: &[u8], pi: usize, c: u8) -> (bool, usize) {
    match p[pi] {
        b'?' => (true, pi + 1),
        b'[' => {
            let (ok, len) = set(&p[pi..], c);
            (ok, pi + len)
        }
        b'\\' if pi + 1 < p.len() => (p[pi + 1] == c, pi + 2),
        x => (x == c, pi + 1),
    }
}

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern index past it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        if pi < pattern.len() && pattern[pi] == b'*' {
            pi += 1;
            star = Some((pi, ti));
            continue;
        }
        if pi < pattern.len() {
            let (ok, next) = one(pattern, pi, text[ti]);
            if ok {
                pi = next;
                ti += 1;
                continue;
            }
        }
        match star {
            // Let the last `*` swallow one more byte and retry.
            Some((sp, st)) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[pi..].iter().all(|&b| b == b'*')
}
