//! A document's shown output against what a command printed: compared by
//! shape, since values differ from run to run.

/// A line with every number replaced by `#` (values differ from run to
/// run; the shape of the output must not).
pub fn normalize(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.trim_end().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_digit() || *c == '.')
            {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    // "1 round" and "2 rounds" have one shape.
    out.replace("# rounds", "# round")
}

/// Whether `actual` matches `expected`, where `...` in `expected` matches
/// anything.
fn line_matches(expected: &str, actual: &str) -> bool {
    let mut rest = actual;
    let parts: Vec<&str> = expected.split("...").collect();
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else { return false };
            rest = &rest[at + p.len()..];
        }
    }
    rest.is_empty()
}

/// Compares a command's output with the output a document shows for it:
/// line by line after [`normalize`], `...` matching anything within a
/// line, and a run of lines of one shape matching a run of any length
/// (a migration prints as many rounds as it takes).
pub fn output_matches(expected: &[&str], actual: &str) -> Result<(), String> {
    fn runs(lines: Vec<String>) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for l in lines {
            if v.last() != Some(&l) {
                v.push(l);
            }
        }
        v
    }
    let e = runs(expected.iter().map(|l| normalize(l)).collect());
    let a = runs(actual.lines().map(normalize).collect());
    let ok = e.len() == a.len() && e.iter().zip(&a).all(|(e, a)| line_matches(e, a));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the document shows (normalized):\n{}\nthe command printed (normalized):\n{}",
            e.join("\n"),
            a.join("\n")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_compared_by_shape() {
        let doc = [
            "round 0: 16.1 MiB sent",
            "round 1: 2.0 MiB sent",
            "done in 3 ms, 1 round",
        ];
        assert!(output_matches(&doc, "round 0: 0.1 MiB sent\ndone in 12 ms, 0 rounds\n").is_ok());
        assert!(output_matches(&doc, "round 0: 0.1 MiB sent\n").is_err());
        assert!(output_matches(&["{\"ok\":true,...}"], "{\"ok\":true,\"state\":\"x\"}").is_ok());
        assert!(output_matches(&["{ \"ok\": true }"], "{\n  \"ok\": true\n}").is_err());
    }
}
