//! What the destination checks of the source's Hello before anything
//! moves: that this host can run the guest with the options it was given,
//! and, for `--copy-disks`, the copies opened, locked and sized.

use crate::compat::{self, TscCheck};
use crate::devices::block::DiskSpec;
use crate::devices::net::NetConfig;
use crate::migration::protocol;
use duet_abi::boot::DeviceKind;
use kvm_ioctls::Kvm;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Checks this host can run a guest described by `h`, with `disks` and
/// `nets` the destination's own `--disk`/`--net` options; the reason
/// otherwise.
pub(super) fn compatible(
    kvm: &Kvm,
    h: &protocol::Hello,
    disks: &[DiskSpec],
    nets: &[NetConfig],
) -> Result<(), String> {
    if h.abi != duet_abi::ABI_VERSION {
        return Err(format!(
            "the guest speaks ABI version {}, this duet speaks {}",
            h.abi,
            duet_abi::ABI_VERSION
        ));
    }
    let cpu = compat::GuestCpu {
        vendor: h.vendor,
        features: h.features,
        tsc_khz: h.tsc_khz,
    };
    compat::check(kvm, &cpu, h.mem_size, TscCheck::Now).map_err(|e| e.to_string())?;
    let (nblock, nnet) = compat::count_devices(&h.devices).map_err(|e| e.to_string())?;
    if nnet != nets.len() {
        return Err(format!(
            "the guest has {nnet} network device(s) but `duet run --incoming` was given {} `--net` option(s); give one `--net tap=NAME` per device, in the source's order (a TAP backs one monitor only: give this host's own)",
            nets.len()
        ));
    }
    if h.copy_disks && disks.len() != nblock {
        return Err(format!(
            "the source copies the guest's {nblock} disk(s) (--copy-disks) but `duet run --incoming` was given {} `--disk` option(s); give one `--disk PATH` per disk, in the source's order, naming the copies here",
            disks.len()
        ));
    }
    if !disks.is_empty() && disks.len() != nblock {
        return Err(format!(
            "the guest has {nblock} disk(s) but `--disk` on `--incoming` maps {}; give one `--disk` per disk, in the source's order, or none to reopen the source's paths",
            disks.len()
        ));
    }
    Ok(())
}

/// Opens (creating if need be) and locks the destination's copies of the
/// disks for `--copy-disks`, sized to the source's disks.
pub(super) fn open_copies(
    h: &protocol::Hello,
    disks: &[DiskSpec],
) -> Result<Vec<(File, u64)>, String> {
    let mut out = Vec::new();
    let block = DeviceKind::Block as u32;
    let sources = h.devices.iter().filter(|d| d.kind == block);
    for (d, spec) in sources.zip(disks) {
        let shown = spec.path.display();
        let cap = Some(d.capacity)
            .filter(|c| *c > 0 && c % protocol::DISK_ALIGN == 0)
            .ok_or_else(|| format!("the source's disk has an invalid capacity ({})", d.capacity))?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // A new copy holds the guest's data: private, as snapshots are.
            .mode(crate::access::FILE_MODE)
            .open(&spec.path)
            .map_err(
                |e| match crate::access::denied_hint(&e, crate::access::WRITABLE) {
                    h if h.is_empty() => format!(
                        "cannot open the disk copy {shown}: {e}; check the path and its directory"
                    ),
                    h => format!("cannot open the disk copy {shown}: {e}{h}"),
                },
            )?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "the disk copy {shown} is in use by another process; give a free file"
            ));
        }
        let meta = f
            .metadata()
            .map_err(|e| format!("disk copy {shown}: {e}"))?;
        if meta.is_file() {
            f.set_len(cap)
                .map_err(|e| format!("cannot size the disk copy {shown} to {cap} bytes: {e}"))?;
        } else {
            return Err(format!(
                "the disk copy {shown} is not a regular file; give a file path"
            ));
        }
        out.push((f, cap));
    }
    Ok(out)
}
