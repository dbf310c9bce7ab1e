//! The destination side: `duet run --incoming ADDR` accepts one source,
//! authenticates it, checks the guest can run here, loads memory and state,
//! and hands back a VM only after the source commits. Any failure before
//! that drops everything: nothing was run.

use super::protocol::{self, Kind};
use super::session::{Role, Session, Transcript};
use super::{wall_ns, MigrateError};
use crate::devices::block::DiskSpec;
use crate::devices::net::NetConfig;
use crate::devices::{relocate, Devices, Reattach};
use crate::memory::GuestMem;
use crate::persist::Persist;
use crate::statefile::StateFile;
use crate::vm::Vm;
use crate::vmm::{Control, Parts, Vmm};
use duet_abi::{Gpa, PAGE_SIZE};
use kvm_ioctls::Kvm;
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod hello;

use hello::{compatible, open_copies};

/// Socket timeout while receiving (the source may pause between rounds).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn state_err(e: impl std::fmt::Display) -> MigrateError {
    MigrateError::State(e.to_string())
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
) -> Result<Vmm, MigrateError> {
    let key = protocol::read_key(key_file)?;
    let kvm = Arc::new(crate::kvm::open(kvm_device).map_err(state_err)?);
    let listener = TcpListener::bind(addr).map_err(|e| MigrateError::listen(addr, e))?;
    log::info!("waiting for a guest on {addr}");
    let (mut s, peer) = accept(&listener)?;
    drop(listener);
    log::info!("incoming guest from {peer}");
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(MigrateError::Connection)?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(MigrateError::Connection)?;
    s.set_nodelay(true).map_err(MigrateError::Connection)?;
    // Before the first byte from the peer: from here this thread builds the
    // guest under the destination's list, then narrows to the vCPU's.
    crate::seccomp::install(crate::seccomp::Thread::Incoming).map_err(state_err)?;
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

/// How often a destination waiting for a source looks for a signal.
const SIGNAL_CHECK: i32 = 100;

/// Accepts one source. A `SIGTERM` or `SIGINT` ends the wait: std's
/// `accept` retries after `EINTR`, so it polls, and looks at the pending
/// signal before every wait and at least every [`SIGNAL_CHECK`] ms (a
/// signal handled just before `poll` starts would not interrupt it).
fn accept(listener: &TcpListener) -> Result<(TcpStream, std::net::SocketAddr), MigrateError> {
    use std::os::fd::AsRawFd;
    listener
        .set_nonblocking(true)
        .map_err(MigrateError::Connection)?;
    loop {
        if let Some(sig) = crate::signals::take() {
            let name = if sig.number() == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            return Err(MigrateError::Stopped(name));
        }
        match listener.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).map_err(MigrateError::Connection)?;
                return Ok((s, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(MigrateError::Connection(e)),
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on a descriptor we own, for one call.
        if unsafe { libc::poll(&mut pfd, 1, SIGNAL_CHECK) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(MigrateError::Connection(e));
            }
        }
    }
}

/// One attempt on an accepted connection; `session` is set once the
/// handshake is done (every later frame is sealed).
fn receive(
    s: &mut TcpStream,
    key: &[u8],
    kvm: Arc<Kvm>,
    (disks, nets): (&[DiskSpec], &[NetConfig]),
    ctl: Arc<Control>,
    session: &mut Option<Session>,
) -> Result<Vmm, MigrateError> {
    // Test hooks (docs/migration.md; `test-hooks` builds only): die
    // mid-pre-copy, or lose the commit ack.
    #[cfg(feature = "test-hooks")]
    let hook = std::env::var("DUET_MIGRATE_DEST_FAIL").ok();
    #[cfg(not(feature = "test-hooks"))]
    let hook: Option<String> = None;
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
    let mem = GuestMem::new(hello.mem_size).map_err(state_err)?;
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
                if zero {
                    for p in first..first + count {
                        mem.write_bytes(Gpa(p * PAGE_SIZE), &zero_page)
                            .map_err(state_err)?;
                    }
                } else {
                    mem.write_bytes(Gpa(first * PAGE_SIZE), data)
                        .map_err(state_err)?;
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
    let file = StateFile::decode(&blob, "the incoming state").map_err(state_err)?;
    let h = &file.header;
    if (h.abi_version, h.vendor, h.features, h.tsc_khz)
        != (hello.abi, hello.vendor, hello.features, hello.tsc_khz)
    {
        return Err(MigrateError::Protocol(
            "the state disagrees with the hello".into(),
        ));
    }
    let mut state = file.to_state().map_err(state_err)?;
    if state.memory.size != hello.mem_size {
        return Err(MigrateError::Protocol("the memory state is invalid".into()));
    }
    // The pages are in: give the memory its writable ranges (checked).
    let mem =
        GuestMem::restore(crate::memory::Backing::Filled(mem), &state.memory).map_err(state_err)?;
    for (f, _) in &copies {
        f.sync_data()
            .map_err(|e| MigrateError::State(format!("flushing a disk copy: {e}")))?;
    }
    state.devices =
        relocate(std::mem::take(&mut state.devices), disks, nets).map_err(MigrateError::State)?;
    let vm = Vm::with_kvm(kvm, mem).map_err(state_err)?;
    // Disks are locked only after Commit (the source still holds them).
    let devices = Devices::restore(Reattach { lock: false }, &state.devices).map_err(state_err)?;
    // Their threads start held: requests the guest left in its queues are
    // the source's until Commit (served here too, an abort would serve
    // them twice: a disk write landing after the source's later ones, a
    // frame sent from both hosts).
    devices.quiesce();
    let parts = Parts {
        vm,
        devices,
        ctl,
        trace: None,
        clone_index: None,
    };
    let vmm = Vmm::assemble(parts, &state).map_err(state_err)?;
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
    if let Err(e) = vmm.devices().lock() {
        log::error!("after commit: {e}; running the guest anyway");
    }
    vmm.resume_devices();
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
    Ok(vmm)
}
