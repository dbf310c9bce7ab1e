//! Which guest pages are populated: resident (`mincore`), or backed by a
//! snapshot's memory file (populated even when not resident).

use super::GuestMem;
use duet_abi::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;

/// Calls `f(first_page, count)` for each run of populated guest pages.
pub fn for_each_resident(
    mem: &GuestMem,
    mut f: impl FnMut(u64, u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    const CHUNK: usize = 64 << 20;
    let base = mem.host_base() as *const u8;
    let total = mem.size() as usize / PAGE;
    let mut vec = vec![0u8; CHUNK / PAGE];
    let mut run: Option<(u64, u64)> = None;
    let mut page = 0usize;
    // File ranges are sorted and pages come in order: walk them with a cursor.
    let files = mem.file_ranges();
    let mut fr = 0usize;
    while page < total {
        let n = (total - page).min(CHUNK / PAGE);
        // SAFETY: the range is inside the guest mapping; mincore only
        // reports residency into `vec`, which holds `n` bytes.
        let r = unsafe {
            libc::mincore(
                base.add(page * PAGE) as *mut libc::c_void,
                n * PAGE,
                vec.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (i, v) in vec[..n].iter().enumerate() {
            let p = (page + i) as u64;
            let gpa = p * PAGE_SIZE;
            while fr < files.len() && files[fr].1 <= gpa {
                fr += 1;
            }
            let populated = v & 1 != 0 || (fr < files.len() && files[fr].0 <= gpa);
            run = match (run, populated) {
                (Some((s, c)), true) => Some((s, c + 1)),
                (None, true) => Some((p, 1)),
                (Some((s, c)), false) => {
                    f(s, c)?;
                    None
                }
                (None, false) => None,
            };
        }
        page += n;
    }
    if let Some((s, c)) = run {
        f(s, c)?;
    }
    Ok(())
}

/// The runs of populated pages, as `(first_page, count)`.
pub fn resident_runs(mem: &GuestMem) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for_each_resident(mem, |p, n| {
        out.push((p, n));
        Ok(())
    })?;
    Ok(out)
}
