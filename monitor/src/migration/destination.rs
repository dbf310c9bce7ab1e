//! The destination side: `duet run --incoming ADDR` accepts one source,
//! authenticates it, checks the guest can run here, loads memory and state,
//! and hands back a VM only after the source commits. Any failure before
//! that drops everything: nothing was run.

use super::protocol::{self, Kind};
use super::session::{Role, Session, Transcript};
use super::{wall_ns, MigrateError};
use crate::control::Control;
use crate::devices::block::DiskSpec;
use crate::devices::net::NetConfig;
use crate::devices::DeviceState;
use crate::loader::Image;
use crate::memory::GuestMem;
use crate::snapshot::format::{StateFile, Tag};
use crate::snapshot::persist::MemState;
use crate::snapshot::{cpu_signature, MonitorState};
use crate::vm::Vm;
use duet_abi::boot::DeviceKind;
use duet_abi::PAGE_SIZE;
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use std::fs::File;
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

/// Socket timeout while receiving (the source may pause between rounds).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn state_err(e: impl std::fmt::Display) -> MigrateError {
    MigrateError::State(e.to_string())
}

/// The device kind of one of Hello's device lines (`kind K flags F`).
fn line_kind(line: &str) -> Option<u32> {
    line.strip_prefix("kind ")?.split(' ').next()?.parse().ok()
}

/// Checks this host can run a guest described by `h`, with `disks` the
/// destination's own `--disk` options; the reason otherwise.
fn compatible(
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
    let host = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID failed: {e}"))?;
    let (vendor, features) = cpu_signature(host.as_slice());
    if vendor != h.vendor {
        return Err(format!(
            "the guest runs on a {} CPU, this host has a {} CPU",
            String::from_utf8_lossy(&h.vendor),
            String::from_utf8_lossy(&vendor)
        ));
    }
    for (i, (g, hst)) in h.features.iter().zip(&features).enumerate() {
        if g & !hst != 0 {
            return Err(format!(
                "this host lacks CPU features the guest uses (word {i}: {:#x})",
                g & !hst
            ));
        }
    }
    // Try the TSC rate on a scratch vCPU: KVM scales only one way here.
    let khz =
        u32::try_from(h.tsc_khz).map_err(|_| format!("TSC {} kHz is impossible", h.tsc_khz))?;
    let vm = kvm
        .create_vm()
        .map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU failed: {e}"))?;
    let here = vcpu.get_tsc_khz().unwrap_or(0);
    if here != khz {
        let ok = vcpu.set_tsc_khz(khz).is_ok() && vcpu.get_tsc_khz().ok() == Some(khz);
        if !ok {
            return Err(format!(
                "the guest's TSC runs at {khz} kHz and KVM here (host {here} kHz) cannot match it"
            ));
        }
    }
    if !(crate::layout::MIN_MEM..=crate::layout::MAX_MEM).contains(&h.mem_size)
        || h.mem_size % PAGE_SIZE != 0
    {
        return Err(format!("guest memory size {} is invalid", h.mem_size));
    }
    let block = DeviceKind::Block as u32;
    let (mut nblock, mut nnet) = (0, 0);
    for line in &h.devices {
        match line_kind(line) {
            Some(k) if k == block => nblock += 1,
            Some(k) if k == DeviceKind::Net as u32 => nnet += 1,
            _ => {
                return Err(format!(
                    "the guest has a device ({line}) this duet cannot map"
                ))
            }
        }
    }
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

/// Points the guest's device records at their paths here: the destination's
/// `--disk` options in order when given (same read-only flag and sector size
/// as on the source), else the source's path, which must be absolute (it
/// comes from the network: nothing relative is resolved here).
///
/// Network devices take this host's TAPs from `nets`, in order; the guest
/// keeps its MAC address (a `mac=` given here must be the same).
fn map_devices(
    mut devices: Vec<DeviceState>,
    disks: &[DiskSpec],
    nets: &[NetConfig],
) -> Result<Vec<DeviceState>, String> {
    let mut given = disks.iter();
    let mut taps = nets.iter();
    for d in &mut devices {
        let spec = match d {
            DeviceState::Block { spec, .. } => spec,
            DeviceState::Net(cfg) => {
                let mine = taps
                    .next()
                    .ok_or("more network devices than `--net` options on `--incoming`")?;
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
                        "the source sent the relative disk path {shown:?}; map it with `--disk PATH` on `--incoming`"
                    ));
                }
            }
            None => return Err("more disks than `--disk` options on `--incoming`".into()),
        }
    }
    if given.next().is_some() {
        return Err("more `--disk` options on `--incoming` than the guest has disks".into());
    }
    if taps.next().is_some() {
        return Err(
            "more `--net` options on `--incoming` than the guest has network devices".into(),
        );
    }
    if taps.next().is_some() {
        return Err(
            "more `--net` options on `--incoming` than the guest has network devices".into(),
        );
    }
    Ok(devices)
}

/// The capacity in a disk's Hello line (`... capacity N`).
fn line_capacity(line: &str) -> Option<u64> {
    line.split_once(" capacity ")?.1.parse().ok()
}

/// Opens (creating if need be) and locks the destination's copies of the
/// disks for `--copy-disks`, sized to the source's disks.
fn open_copies(h: &protocol::Hello, disks: &[DiskSpec]) -> Result<Vec<(File, u64)>, String> {
    let mut out = Vec::new();
    let block = DeviceKind::Block as u32;
    let lines = h.devices.iter().filter(|l| line_kind(l) == Some(block));
    for (line, spec) in lines.zip(disks) {
        let shown = spec.path.display();
        let cap = line_capacity(line)
            .filter(|c| *c > 0 && c % protocol::DISK_ALIGN == 0)
            .ok_or_else(|| format!("the source's disk line `{line}` has no valid capacity"))?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&spec.path)
            .map_err(|e| {
                format!("cannot open the disk copy {shown}: {e}; check the path and its directory")
            })?;
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

/// A refusal; [`incoming`] tells the source `why`.
fn refuse(why: String) -> MigrateError {
    MigrateError::Rejected(why)
}

/// Waits on `addr` for one incoming guest and returns it, built and ready
/// for [`Vm::run`], once the source has committed. `disks`, when not empty,
/// maps the guest's disks (in device order) to paths here; otherwise each
/// disk is reopened from the path the source sends (shared storage).
/// `nets` gives this host's TAP for each of the guest's network devices.
pub fn incoming(
    addr: &str,
    key_file: &Path,
    kvm_device: &Path,
    disks: &[DiskSpec],
    nets: &[NetConfig],
    ctl: Arc<Control>,
) -> Result<Vm, MigrateError> {
    let key = protocol::read_key(key_file)?;
    let kvm = crate::kvm::open(kvm_device).map_err(state_err)?;
    let listener = TcpListener::bind(addr).map_err(MigrateError::Connection)?;
    log::info!("waiting for a guest on {addr}");
    let (mut s, peer) = listener.accept().map_err(MigrateError::Connection)?;
    drop(listener);
    log::info!("incoming guest from {peer}");
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(MigrateError::Connection)?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(MigrateError::Connection)?;
    s.set_nodelay(true).map_err(MigrateError::Connection)?;
    let mut session = None;
    match receive(&mut s, &key, kvm, (disks, nets), ctl, &mut session) {
        Ok(vm) => Ok(vm),
        Err(e) => {
            // Tell the source why (best effort) unless it already knows:
            // sealed once the session exists, plain during the handshake.
            let why = match &e {
                MigrateError::Refused(_) | MigrateError::Connection(_) => None,
                MigrateError::Rejected(why) => Some(why.clone()),
                e => Some(e.to_string()),
            };
            if let Some(why) = why {
                let _ = match session.as_mut() {
                    Some(sess) => sess.write(&mut s, Kind::Refuse, why.as_bytes()),
                    None => protocol::write_frame(&mut s, Kind::Refuse, why.as_bytes()),
                };
            }
            Err(e)
        }
    }
}

/// One attempt on an accepted connection; `session` is set once the
/// handshake is done (every later frame is sealed).
fn receive(
    s: &mut TcpStream,
    key: &[u8],
    kvm: Kvm,
    (disks, nets): (&[DiskSpec], &[NetConfig]),
    ctl: Arc<Control>,
    session: &mut Option<Session>,
) -> Result<Vm, MigrateError> {
    // Test hooks (docs/migration.md): die mid-pre-copy, or lose the commit ack.
    let hook = std::env::var("DUET_MIGRATE_DEST_FAIL").ok();
    // Handshake: prove we hold the key, make the source prove it, then check.
    let mut t = Transcript::default();
    let hello: protocol::Hello = t.recv(s)?.expect(Kind::Hello)?.decode()?;
    if hello.magic != protocol::MAGIC || hello.protocol != protocol::PROTOCOL_VERSION {
        return Err(refuse(format!(
            "migration protocol version {} is not this duet's {}",
            hello.protocol,
            protocol::PROTOCOL_VERSION
        )));
    }
    let nonce = protocol::nonce();
    let ch = protocol::Challenge {
        nonce,
        mac: protocol::mac(key, b"dst", &t.hash(), &nonce),
    };
    t.send(s, Kind::Challenge, &ch)?;
    let after_challenge = t.hash();
    let auth: protocol::Auth = t.recv(s)?.expect(Kind::Auth)?.decode()?;
    // The proof covers the Hello: nothing in it is acted on before this.
    if !protocol::verify(key, b"src", &after_challenge, &[], &auth.mac) {
        return Err(refuse(
            "the source does not hold the migration key (check --migration-key-file on both sides), or the handshake was altered on the way"
                .into(),
        ));
    }
    let sess = session.insert(Session::new(
        key,
        Role::Destination,
        &hello.nonce,
        &nonce,
        &t.hash(),
    ));
    if let Err(why) = compatible(&kvm, &hello, disks, nets) {
        return Err(refuse(format!("incompatible: {why}")));
    }
    // --copy-disks: the copies are ours from the start (locked now).
    let copies = if hello.copy_disks {
        match open_copies(&hello, disks) {
            Ok(c) => c,
            Err(why) => return Err(refuse(why)),
        }
    } else {
        Vec::new()
    };
    let capacities: Vec<u64> = copies.iter().map(|c| c.1).collect();
    sess.write(s, Kind::Accept, &[])?;

    // Pre-copy and stop: pages until the state arrives.
    let mut mem = GuestMem::new(hello.mem_size).map_err(state_err)?;
    let pages = hello.mem_size / PAGE_SIZE;
    let mut blob = Vec::new();
    let mut r = BufReader::with_capacity(1 << 20, s.try_clone().map_err(MigrateError::Connection)?);
    let mut spare = Vec::new();
    let zero_page = [0u8; PAGE_SIZE as usize];
    let end: protocol::StateEnd = loop {
        let f = sess.read_into(&mut r, std::mem::take(&mut spare))?;
        match f.kind {
            Kind::Pages | Kind::ZeroPages => {
                let zero = f.kind == Kind::ZeroPages;
                let (first, count, data) = protocol::decode_pages(&f.payload, pages, zero)?;
                let at = GuestAddress(first * PAGE_SIZE);
                if zero {
                    for p in first..first + count {
                        mem.inner()
                            .write_slice(&zero_page, GuestAddress(p * PAGE_SIZE))
                            .map_err(state_err)?;
                    }
                } else {
                    mem.inner().write_slice(data, at).map_err(state_err)?;
                }
                spare = f.payload;
            }
            Kind::Disk | Kind::DiskZero => {
                let zero = f.kind == Kind::DiskZero;
                let (i, offset, len, data) = protocol::decode_disk(&f.payload, &capacities, zero)?;
                let file = &copies[i].0;
                let w = if zero {
                    let z = vec![0u8; len as usize];
                    file.write_all_at(&z, offset)
                } else {
                    file.write_all_at(data, offset)
                };
                w.map_err(|e| MigrateError::State(format!("writing disk copy {i}: {e}")))?;
                spare = f.payload;
            }
            Kind::State => {
                if blob.len() as u64 + f.payload.len() as u64 > protocol::MAX_STATE {
                    return Err(MigrateError::Protocol("guest state too large".into()));
                }
                blob.extend_from_slice(&f.payload);
            }
            Kind::StateEnd => break f.decode()?,
            Kind::Sync => {
                if hook.as_deref() == Some("crash") {
                    log::error!("DUET_MIGRATE_DEST_FAIL=crash: aborting (test hook)");
                    std::process::abort();
                }
                sess.write(s, Kind::SyncAck, &[])?
            }
            _ => {
                f.expect(Kind::StateEnd)?;
            }
        }
    };
    let loaded_at = Instant::now();
    if end.len != blob.len() as u64 || end.crc != crc32fast::hash(&blob) {
        return Err(MigrateError::Protocol(
            "guest state length or checksum mismatch".into(),
        ));
    }
    let state = StateFile::decode(&blob, "the incoming state").map_err(state_err)?;
    let h = &state.header;
    if (h.abi_version, h.vendor, h.features, h.tsc_khz)
        != (hello.abi, hello.vendor, hello.features, hello.tsc_khz)
    {
        return Err(MigrateError::Protocol(
            "the state disagrees with the hello".into(),
        ));
    }
    let ms: MemState = state.get(Tag::Memory).map_err(state_err)?;
    if ms.size != hello.mem_size || ms.writable.iter().any(|&(a, b)| a > b || b > ms.size) {
        return Err(MigrateError::Protocol("the memory state is invalid".into()));
    }
    mem.set_writable(ms.writable);
    for (f, _) in &copies {
        f.sync_data()
            .map_err(|e| MigrateError::State(format!("flushing a disk copy: {e}")))?;
    }
    let devices: Vec<DeviceState> = state.get(Tag::Devices).map_err(state_err)?;
    let devices = map_devices(devices, disks, nets).map_err(MigrateError::State)?;
    let mut vm = build(&state, &devices, mem, kvm, ctl).map_err(state_err)?;
    log::debug!(
        "state of {} KiB loaded in {:.2} ms",
        blob.len() >> 10,
        loaded_at.elapsed().as_secs_f64() * 1e3
    );
    sess.write(s, Kind::Ready, &[])?;

    // Commit: from here the guest is ours; before it, nothing ran.
    sess.read(&mut r)?.expect(Kind::Commit)?;
    // The source dropped its disk locks at stop (after flushing); the
    // guest is ours now, so take them. (Copies: the lock moves from the
    // descriptor that wrote them to the device's.) Failing means another
    // process opened a disk meanwhile: the guest runs anyway (it is
    // nowhere else).
    drop(copies);
    if let Err(e) = vm.devices.lock_disks() {
        log::error!("after commit: {e}; running the guest anyway");
    }
    let ack = protocol::CommitAck {
        resume_wall_ns: wall_ns(),
        load_ns: loaded_at.elapsed().as_nanos() as u64,
    };
    if hook.as_deref() == Some("ack") {
        log::warn!("DUET_MIGRATE_DEST_FAIL=ack: dropping the commit acknowledgement (test hook)");
        let _ = s.shutdown(std::net::Shutdown::Both);
    } else if let Err(e) = sess.send(s, Kind::CommitAck, &ack) {
        log::warn!("commit acknowledgement not sent ({e}); running the guest anyway");
    }
    vm.started = Instant::now();
    Ok(vm)
}

/// Builds the VM from the received state and memory (as a snapshot
/// restore does), then bumps the generation and rewrites clock and identity.
fn build(
    st: &StateFile,
    devices: &[DeviceState],
    mem: GuestMem,
    kvm: Kvm,
    ctl: Arc<Control>,
) -> Result<Vm, crate::snapshot::SnapshotError> {
    use crate::snapshot::SnapshotError as E;
    let monitor: MonitorState = st.get(Tag::Monitor)?;
    let image = Image::parse(st.raw(Tag::Image)?.to_vec(), mem.size())?;
    let vm_fd = kvm
        .create_vm()
        .map_err(|e| E::Kvm(format!("KVM_CREATE_VM failed: {e}")))?;
    crate::vm::register_memory(&vm_fd, &mem).map_err(|e| E::Kvm(e.to_string()))?;
    if devices.len() > duet_abi::boot::MAX_DEVICES {
        return Err(E::Invalid(format!("{} devices is too many", devices.len())));
    }
    // Disks are locked only after Commit (the source still holds them).
    let list = devices
        .iter()
        .enumerate()
        .map(|(id, d)| crate::devices::Device::reattach(d, id, false))
        .collect::<Result<Vec<_>, _>>()?;
    crate::snapshot::assemble(
        st,
        crate::snapshot::Parts {
            kvm,
            vm_fd,
            mem,
            image,
            devices: crate::devices::Devices { list },
            ctl,
            trace: None,
            clone_index: monitor.clone_index,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str, readonly: bool, name: Option<&str>) -> DiskSpec {
        DiskSpec {
            path: path.into(),
            readonly,
            name: name.map(Into::into),
            sector_size: 512,
        }
    }

    fn rec(path: &str) -> DeviceState {
        DeviceState::Block {
            spec: disk(path, false, Some("disk0")),
            capacity: 1 << 20,
        }
    }

    fn map(d: Vec<DeviceState>, disks: &[DiskSpec]) -> Result<Vec<DeviceState>, String> {
        map_devices(d, disks, &[])
    }

    #[test]
    fn nics_take_this_hosts_taps_and_keep_their_mac() {
        let mac = Some([2, 0, 0, 0, 0, 2]);
        let nic = |tap: &str, mac| {
            DeviceState::Net(NetConfig {
                tap: tap.into(),
                mac,
            })
        };
        let here = NetConfig {
            tap: "tap1".into(),
            mac: None,
        };
        let m = map_devices(vec![nic("tap0", mac)], &[], std::slice::from_ref(&here)).unwrap();
        assert_eq!(m, vec![nic("tap1", mac)]);
        assert!(map_devices(vec![nic("tap0", mac)], &[], &[]).is_err());
        assert!(map_devices(vec![], &[], std::slice::from_ref(&here)).is_err());
        let other = NetConfig {
            mac: Some([2, 0, 0, 0, 0, 9]),
            ..here
        };
        let e = map_devices(vec![nic("tap0", mac)], &[], &[other]).unwrap_err();
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

    #[test]
    fn device_lines_parse() {
        assert_eq!(line_capacity("kind 1 flags 0x0 capacity 4096"), Some(4096));
        assert_eq!(line_capacity("kind 1 flags 0x0 capacity -1"), None);
        assert_eq!(line_capacity("kind 2 flags 0x0"), None);
        assert_eq!(line_kind("kind 1 flags 0x0"), Some(1));
        assert_eq!(line_kind("kind x"), None);
        assert_eq!(line_kind(""), None);
    }
}
