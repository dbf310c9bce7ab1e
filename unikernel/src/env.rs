//! Command-line arguments and environment, as the monitor passed them.

use duet_abi::boot::Str;

fn strs(ptr: duet_abi::Gpa, n: u32) -> impl Iterator<Item = &'static str> {
    // SAFETY: the monitor wrote `n` `Str`s at `ptr`, each pointing at UTF-8
    // bytes, all in read-only boot-info pages that live as long as the guest.
    let list: &'static [Str] =
        unsafe { core::slice::from_raw_parts(ptr.0 as *const Str, n as usize) };
    list.iter().map(|s| {
        // SAFETY: see above; the monitor only passes valid UTF-8, checked again here.
        let bytes = unsafe { core::slice::from_raw_parts(s.ptr.0 as *const u8, s.len as usize) };
        core::str::from_utf8(bytes).unwrap_or("")
    })
}

/// The arguments after `--` on the monitor's command line (no program name).
pub fn args() -> impl Iterator<Item = &'static str> {
    let bi = crate::rt::boot_info();
    strs(bi.argv, bi.argc)
}

/// The environment as `(key, value)` pairs, from `--env K=V`.
pub fn vars() -> impl Iterator<Item = (&'static str, &'static str)> {
    let bi = crate::rt::boot_info();
    strs(bi.envp, bi.envc).map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// The value of environment variable `key`.
pub fn var(key: &str) -> Option<&'static str> {
    vars().find(|(k, _)| *k == key).map(|(_, v)| v)
}
