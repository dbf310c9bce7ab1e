//! Inline requests (`PING\r\n`, as typed into telnet) split into
//! arguments the way Redis's `sdssplitargs` does it.

use alloc::vec::Vec;

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Splits an inline line as Redis's `sdssplitargs`: blanks separate
/// arguments, `"..."` takes `\n \r \t \b \a \xHH` escapes, `'...'` takes
/// `\'`; a closing quote must end the argument. `None`: unbalanced quotes.
pub fn split_args(line: &[u8], args: &mut Vec<Vec<u8>>) -> Option<()> {
    // Redis reads the line as a C string: a NUL ends it.
    let line = &line[..line.iter().position(|&b| b == 0).unwrap_or(line.len())];
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Some(());
        }
        let mut cur = Vec::new();
        let (mut dq, mut sq) = (false, false);
        loop {
            let c = line.get(i).copied();
            if dq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'x') => {
                        let hx = (line.get(i + 2).and_then(|&h| hex(h)))
                            .zip(line.get(i + 3).and_then(|&h| hex(h)));
                        match hx {
                            Some((hi, lo)) => {
                                cur.push(hi << 4 | lo);
                                i += 3;
                            }
                            None => {
                                cur.push(b'x');
                                i += 1;
                            }
                        }
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        cur.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            x => x,
                        });
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(x) => cur.push(x),
                }
            } else if sq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(x) => cur.push(x),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => dq = true,
                    Some(b'\'') => sq = true,
                    Some(x) => cur.push(x),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}
