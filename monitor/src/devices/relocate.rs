//! Mapping a guest's device records onto this host: another host's disk
//! paths and TAPs become the ones given here (`duet run --incoming` with
//! `--disk`/`--net`, and restores that move NICs).

use super::block::DiskSpec;
use super::net::NetConfig;
use super::DeviceState;

/// Points the guest's device records at their paths here: the destination's
/// `--disk` options in order when given (same read-only flag and sector size
/// as on the source), else the source's path, which must be absolute (it
/// comes from the network: nothing relative is resolved here).
///
/// Network devices take this host's TAPs from `nets`, in order; the guest
/// keeps its MAC address (a `mac=` given here must be the same).
pub fn relocate(
    mut devices: Vec<DeviceState>,
    disks: &[DiskSpec],
    nets: &[NetConfig],
) -> Result<Vec<DeviceState>, String> {
    let mut given = disks.iter();
    let mut taps = nets.iter();
    for d in &mut devices {
        let spec = match d {
            DeviceState::Block(b) | DeviceState::VirtioBlock(b, _) => &mut b.spec,
            DeviceState::Net(cfg) | DeviceState::VirtioNet(cfg, _) => {
                let mine = taps
                    .next()
                    .ok_or("more network devices than `--net` options here")?;
                if mine.mac.is_some() && mine.mac != cfg.mac {
                    return Err(format!(
                        "`--net tap={}` gives a MAC address other than the guest's ({:02x?}); drop `mac=` (the guest keeps its own)",
                        mine.tap,
                        cfg.mac.unwrap_or_default()
                    ));
                }
                cfg.tap = mine.tap.clone();
                continue;
            }
        };
        let shown = spec.path.display().to_string();
        match given.next() {
            Some(mine) => {
                if (mine.readonly, mine.sector_size) != (spec.readonly, spec.sector_size) {
                    return Err(format!(
                        "disk {shown} is attached {} with {}-byte sectors on the source; give the same `,ro` and `,sector=` in `--disk {}`",
                        if spec.readonly { "read-only" } else { "read-write" },
                        spec.sector_size,
                        mine.path.display()
                    ));
                }
                if mine.name.is_some() && mine.name != spec.name {
                    return Err(format!(
                        "`--disk {}` names the disk {:?} but the source's disk {shown} is {:?}; device names must match",
                        mine.path.display(),
                        mine.name.as_deref().unwrap_or_default(),
                        spec.name.as_deref().unwrap_or_default()
                    ));
                }
                spec.path = mine.path.clone();
            }
            None if disks.is_empty() => {
                if !spec.path.is_absolute() {
                    return Err(format!(
                        "the source sent the relative disk path {shown:?}; map it with `--disk PATH` here"
                    ));
                }
            }
            None => return Err("more disks than `--disk` options here".into()),
        }
    }
    if given.next().is_some() {
        return Err("more `--disk` options here than the guest has disks".into());
    }
    if taps.next().is_some() {
        return Err("more `--net` options here than the guest has network devices".into());
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::block::BlockState;

    fn disk(path: &str, readonly: bool, name: Option<&str>) -> DiskSpec {
        DiskSpec {
            path: path.into(),
            readonly,
            name: name.map(Into::into),
            sector_size: 512,
            transport: Default::default(),
        }
    }

    fn rec(path: &str) -> DeviceState {
        DeviceState::Block(BlockState {
            spec: disk(path, false, Some("disk0")),
            capacity: 1 << 20,
        })
    }

    fn map(d: Vec<DeviceState>, disks: &[DiskSpec]) -> Result<Vec<DeviceState>, String> {
        relocate(d, disks, &[])
    }

    #[test]
    fn nics_take_this_hosts_taps_and_keep_their_mac() {
        let mac = Some([2, 0, 0, 0, 0, 2]);
        let nic = |tap: &str, mac| {
            DeviceState::Net(NetConfig {
                tap: tap.into(),
                mac,
                transport: Default::default(),
            })
        };
        let here = NetConfig {
            tap: "tap1".into(),
            mac: None,
            transport: Default::default(),
        };
        let m = relocate(vec![nic("tap0", mac)], &[], std::slice::from_ref(&here)).unwrap();
        assert_eq!(m, vec![nic("tap1", mac)]);
        assert!(relocate(vec![nic("tap0", mac)], &[], &[]).is_err());
        assert!(relocate(vec![], &[], std::slice::from_ref(&here)).is_err());
        let other = NetConfig {
            mac: Some([2, 0, 0, 0, 0, 9]),
            ..here
        };
        let e = relocate(vec![nic("tap0", mac)], &[], &[other]).unwrap_err();
        assert!(e.contains("MAC"), "{e}");
    }

    #[test]
    fn disks_map_by_order_and_relative_paths_from_the_stream_are_refused() {
        let m = map(vec![rec("/a.img")], &[]).unwrap();
        assert_eq!(m, vec![rec("/a.img")]);
        let m = map(vec![rec("/a.img")], &[disk("/b.img", false, None)]).unwrap();
        assert_eq!(m, vec![rec("/b.img")]);
        let e = map(vec![rec("../a.img")], &[]).unwrap_err();
        assert!(e.contains("relative"), "{e}");
        let e = map(vec![rec("/a.img")], &[disk("/b.img", true, None)]).unwrap_err();
        assert!(e.contains(",ro"), "{e}");
        let e = map(vec![rec("/a.img")], &[disk("/b", false, Some("x"))]).unwrap_err();
        assert!(e.contains("names must match"), "{e}");
        let two = [disk("/b", false, None), disk("/c", false, None)];
        assert!(map(vec![rec("/a.img")], &two).is_err());
        assert!(map(vec![rec("/a.img"), rec("/c.img")], &two[..1]).is_err());
    }
}
