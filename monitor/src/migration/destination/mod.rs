//! The destination side: `duet run --incoming ADDR` accepts one source,
//! authenticates it, checks the guest can run here, loads memory and state,
//! and hands back a VM only after the source commits. Any failure before
//! that drops everything: nothing was run.

use super::protocol::{self, Kind};
use super::session::Session;
use super::{wall_ns, MigrateError};
use crate::devices::block::DiskSpec;
use crate::devices::net::NetConfig;
use crate::devices::{relocate, Devices, Reattach};
use crate::memory::GuestMem;
use crate::persist::Persist;
use crate::vm::Vm;
use crate::vmm::{Control, Parts, Vmm};
use kvm_ioctls::Kvm;
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod handshake;
mod hello;
mod precopy;

pub(crate) use handshake::handshake;
use hello::{compatible, open_copies};
pub(crate) use precopy::{precopy, state_of, Landing};

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
    let (hello, sess) = handshake(s, key, protocol::nonce())?;
    let sess = session.insert(sess);
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
    let mut r = BufReader::with_capacity(1 << 20, s.try_clone().map_err(MigrateError::Connection)?);
    let mut disk = |i: usize, offset: u64, data: Option<&[u8]>, len: u64| {
        let file: &std::fs::File = &copies[i].0;
        let w = match data {
            Some(d) => file.write_all_at(d, offset),
            None => file.write_all_at(&vec![0u8; len as usize], offset),
        };
        w.map_err(|e| MigrateError::State(format!("writing disk copy {i}: {e}")))
    };
    let mut on_sync = || {
        if hook.as_deref() == Some("crash") {
            log::error!("DUET_MIGRATE_DEST_FAIL=crash: aborting (test hook)");
            std::process::abort();
        }
    };
    let landing = Landing {
        mem: &mem,
        capacities: &capacities,
        disk: &mut disk,
        on_sync: &mut on_sync,
    };
    let (end, blob) = precopy(sess, &mut r, s, landing)?;
    let loaded_at = Instant::now();
    let mut state = state_of(&end, &blob, &hello)?;
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
