//! The source side: the vCPU thread's steps ([`on_request`]) and the
//! migration thread that drives the attempt ([`migrate`]).
//!
//! The migration thread never touches the VM: it reads guest memory through
//! a clone of the memory object and reads the dirty log through a duplicate
//! of the VM fd, both handed over by the vCPU thread at [`Step::Start`].
//! Pausing, capturing state and resuming are requests the vCPU thread
//! serves between two `KVM_RUN`s (so an in-flight hypercall completes first).

use super::dirty::{DirtySet, HostDirty};
use super::protocol::{self, Kind};
use super::{ms, wall_ns, MigrateError, MigrateRequest, Progress, Slot, Summary};
use crate::control::{Control, Request, Response};
use crate::snapshot::format::{self, Header, StateFile, Tag};
use crate::snapshot::persist::{GuestClock, Persist};
use crate::snapshot::{cpu_signature, MonitorState, SnapshotError};
use crate::vm::Vm;
use duet_abi::PAGE_SIZE;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Pre-copy rounds after the full copy, at most.
pub const MAX_ROUNDS: u32 = 30;
/// Rounds in a row that do not get the dirty set 10% below its best so far
/// before stop-and-copy.
pub const STALL_ROUNDS: u32 = 3;
/// Socket timeout for every read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to retry connecting while the destination starts.
const CONNECT_FOR: Duration = Duration::from_secs(5);

/// A step the vCPU thread performs for the migration thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Start dirty tracking and hand over memory access.
    Start,
    /// Pause the guest and capture its state.
    Stop,
    /// The attempt ended.
    End(End),
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The destination acknowledged commit: stop this guest for good.
    Committed(String),
    /// Failed before commit: run on as before.
    Abort,
    /// Commit not acknowledged: stay paused.
    Unknown,
}

/// What the vCPU thread hands over at [`Step::Start`].
pub struct Handoff {
    mem: GuestMemoryMmap<()>,
    vm: VmFd,
    size: u64,
    host_dirty: Arc<HostDirty>,
    resident: Vec<(u64, u64)>,
    hello: protocol::Hello,
}

/// The state captured at [`Step::Stop`].
struct Stopped {
    blob: Vec<u8>,
    paused_wall_ns: u64,
    paused_at: Instant,
}

/// Shared between the two threads (inside [`Slot`]).
#[derive(Default)]
pub struct SlotState {
    active: bool,
    handoff: Option<Handoff>,
    stopped: Option<Stopped>,
    was_paused: bool,
    /// Paused for migration: `resume` is refused until the attempt ends.
    held: bool,
    migrated_to: Option<String>,
}

impl Slot {
    /// Whether the guest is held paused by a migration (resume refused).
    pub fn held(&self) -> bool {
        self.lock().held
    }

    /// vCPU thread: the address the guest migrated to, once committed.
    pub fn migrated(&self) -> Option<String> {
        self.lock().migrated_to.take()
    }

    /// vCPU thread, after the guest ended: waits until no migration thread
    /// reads guest memory any more, so the memory can be unmapped.
    pub fn wait_idle(&self) {
        let mut s = self.lock();
        while s.active {
            s = self.idle.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self) {
        let mut s = self.lock();
        s.active = false;
        s.handoff = None;
        s.stopped = None;
        self.idle.notify_all();
    }
}

fn set_dirty_log(vm: &Vm, on: bool) -> Result<(), String> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        guest_phys_addr: 0,
        memory_size: vm.mem.size(),
        userspace_addr: vm.mem.host_base(),
    };
    // SAFETY: the same region `register_memory` registered (our own mapping,
    // alive as long as the VM); only the flags change.
    unsafe { vm._vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION (dirty log {on}) failed: {e}"))?;
    vm.mem.host_dirty.set(on);
    Ok(())
}

/// vCPU thread: serves one migration step.
pub(crate) fn on_request(vm: &mut Vm, step: Step) -> Response {
    let r = match step {
        Step::Start => start(vm),
        Step::Stop => stop(vm),
        Step::End(end) => finish(vm, end),
    };
    match r {
        Ok(()) => Response {
            state: Some(if vm.paused { "paused" } else { "running" }.into()),
            ..Response::ok()
        },
        Err(e) => Response::err(e),
    }
}

fn start(vm: &mut Vm) -> Result<(), String> {
    if vm.ctl.migration.lock().active {
        return Err("a migration is already in progress".into());
    }
    // SAFETY: dup of our own open VM fd; the new fd is owned by the VmFd below.
    let fd = unsafe { libc::dup(vm._vm.as_raw_fd()) };
    if fd < 0 {
        return Err(format!(
            "cannot duplicate the VM fd: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a fresh duplicate of a KVM VM fd, owned by nobody else.
    let vm_fd = unsafe { vm._kvm.create_vmfd_from_rawfd(fd) }
        .map_err(|e| format!("cannot wrap the VM fd: {e}"))?;
    let mut resident = Vec::new();
    crate::snapshot::memfile::for_each_resident(&vm.mem, |p, n| {
        resident.push((p, n));
        Ok(())
    })
    .map_err(|e| format!("cannot list guest memory: {e}"))?;
    let (vendor, features) = cpu_signature(&vm.vcpu.cpuid);
    let tsc_khz = vm
        .vcpu
        .get_tsc_khz()
        .map_err(|e| format!("KVM_GET_TSC_KHZ failed: {e}"))?;
    let hello = protocol::Hello {
        magic: protocol::MAGIC,
        protocol: protocol::PROTOCOL_VERSION,
        abi: duet_abi::ABI_VERSION,
        vendor,
        features,
        tsc_khz: u64::from(tsc_khz),
        mem_size: vm.mem.size(),
        devices: device_lines(vm),
        nonce: [0; protocol::NONCE_LEN],
    };
    // Tracking starts before the migration thread reads the first page.
    set_dirty_log(vm, true)?;
    let mut s = vm.ctl.migration.lock();
    s.active = true;
    s.was_paused = vm.paused;
    s.handoff = Some(Handoff {
        mem: vm.mem.inner().clone(),
        vm: vm_fd,
        size: vm.mem.size(),
        host_dirty: vm.mem.host_dirty.clone(),
        resident,
        hello,
    });
    Ok(())
}

fn device_lines(vm: &Vm) -> Vec<String> {
    vm.devices
        .infos()
        .iter()
        .map(|d| format!("kind {} flags {:#x}", d.kind, d.flags))
        .collect()
}

/// Captures what a snapshot's state file holds, minus the memory pages.
fn capture(vm: &mut Vm) -> Result<Vec<u8>, SnapshotError> {
    vm.complete_io().map_err(SnapshotError::Kvm)?;
    let vcpu = vm.vcpu.save()?;
    let kvm_clock = vm
        ._vm
        .get_clock()
        .map_err(|e| SnapshotError::Kvm(format!("KVM_GET_CLOCK failed: {e}")))?;
    let (vendor, features) = cpu_signature(&vcpu.cpuid);
    let monitor = MonitorState {
        exits: vm.exits,
        heap: vm.heap,
        page_tables: vm.pt.save()?,
        generation: vm.generation,
        clone_index: vm.clone_index,
    };
    let mut state = StateFile {
        header: Header {
            format_version: format::FORMAT_VERSION,
            abi_version: duet_abi::ABI_VERSION,
            vendor,
            features,
            tsc_khz: u64::from(vcpu.tsc_khz),
            snapshot_id: crate::bootinfo::random_seed()[0],
        },
        sections: Vec::new(),
    };
    state.put(Tag::Vcpu, &vcpu)?;
    state.put(Tag::KvmClock, &kvm_clock)?;
    state.put(Tag::Clock, &GuestClock { page: vm.clock }.save()?)?;
    state.put(Tag::Monitor, &monitor)?;
    state
        .sections
        .push((Tag::Image as u32, vm.image.bytes().to_vec()));
    state.put(Tag::Devices, &vm.devices.save()?)?;
    state.put(Tag::Memory, &vm.mem.save()?)?;
    Ok(state.encode())
}

fn stop(vm: &mut Vm) -> Result<(), String> {
    if !vm.ctl.migration.lock().active {
        return Err("no migration in progress".into());
    }
    let paused_at = Instant::now();
    let paused_wall_ns = wall_ns();
    vm.paused = true;
    let blob = capture(vm).map_err(|e| e.to_string())?;
    let mut s = vm.ctl.migration.lock();
    s.held = true;
    s.stopped = Some(Stopped {
        blob,
        paused_wall_ns,
        paused_at,
    });
    Ok(())
}

fn finish(vm: &mut Vm, end: End) -> Result<(), String> {
    let was_paused = {
        let mut s = vm.ctl.migration.lock();
        s.held = false;
        s.was_paused
    };
    match end {
        End::Committed(to) => {
            vm.paused = true;
            vm.ctl.migration.lock().migrated_to = Some(to);
            Ok(())
        }
        End::Abort => {
            vm.paused = was_paused;
            set_dirty_log(vm, false)
        }
        End::Unknown => {
            vm.paused = true;
            set_dirty_log(vm, false)
        }
    }
}

fn step(ctl: &Control, s: Step) -> Result<(), MigrateError> {
    let r = ctl.request(Request::Migration(s));
    if r.ok {
        Ok(())
    } else {
        Err(MigrateError::State(
            r.error.unwrap_or_else(|| "the vCPU thread refused".into()),
        ))
    }
}

/// Migrates the guest behind `ctl` as `req` says, reporting each round to
/// `progress`. On any failure before commit the guest runs on here.
pub fn migrate(
    ctl: &Control,
    req: &MigrateRequest,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary, MigrateError> {
    let key = protocol::read_key(std::path::Path::new(&req.key_file))?;
    if let Some(p) = &req.fail_at {
        if !super::FAIL_PHASES.contains(&p.as_str()) {
            return Err(MigrateError::State(format!(
                "DUET_MIGRATE_FAIL={p}: phases are {:?}",
                super::FAIL_PHASES
            )));
        }
    }
    step(ctl, Step::Start)?;
    let handoff = ctl.migration.lock().handoff.take();
    let result = match handoff {
        Some(h) => {
            let mut a = Attempt {
                ctl,
                req,
                key: &key,
                h: &h,
                bytes: 0,
                progress,
            };
            let r = a.run();
            drop(h);
            r
        }
        None => Err(MigrateError::State(
            "the vCPU thread handed over nothing".into(),
        )),
    };
    let end = match &result {
        Ok(s) => End::Committed(s.to.clone()),
        Err(MigrateError::Unknown(_)) => End::Unknown,
        Err(_) => End::Abort,
    };
    let ended = step(ctl, Step::End(end));
    ctl.migration.release();
    if let (Ok(_), Err(e)) = (&result, ended) {
        log::warn!("after commit: {e}");
    }
    result
}

struct Attempt<'a> {
    ctl: &'a Control,
    req: &'a MigrateRequest,
    key: &'a [u8],
    h: &'a Handoff,
    bytes: u64,
    progress: &'a mut dyn FnMut(&Progress),
}

fn connect(addr: &str) -> Result<TcpStream, MigrateError> {
    let deadline = Instant::now() + CONNECT_FOR;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(MigrateError::Connection)?
        .collect();
    loop {
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, IO_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or_else(|| std::io::Error::other("no address"));
        if e.kind() != std::io::ErrorKind::ConnectionRefused || Instant::now() > deadline {
            return Err(MigrateError::Connection(e));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Attempt<'_> {
    fn cut(&self, s: &TcpStream, phase: &str) -> Result<(), MigrateError> {
        if self.req.fail_at.as_deref() == Some(phase) {
            let _ = s.shutdown(Shutdown::Both);
            return Err(MigrateError::Injected(phase.into()));
        }
        Ok(())
    }

    fn frame(&mut self, s: &mut TcpStream, kind: Kind, payload: &[u8]) -> Result<(), MigrateError> {
        self.bytes += (protocol::FRAME_HEADER + payload.len()) as u64;
        protocol::write_frame(s, kind, payload)
    }

    fn run(&mut self) -> Result<Summary, MigrateError> {
        let t0 = Instant::now();
        let mut s = connect(&self.req.addr)?;
        s.set_nodelay(true).map_err(MigrateError::Connection)?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(MigrateError::Connection)?;
        s.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(MigrateError::Connection)?;
        self.handshake(&mut s)?;
        self.cut(&s, "handshake")?;

        // Round 0: every populated page; the destination starts zeroed.
        let start = Instant::now();
        for &(first, count) in &self.h.resident {
            self.send_run(&mut s, first, count, true)?;
        }
        self.cut(&s, "precopy")?;
        let (rounds, forced_stop, pending) = self.precopy(&mut s, start)?;

        // Stop: the vCPU thread pauses the guest after its last exit.
        step(self.ctl, Step::Stop)?;
        let stopped = self
            .ctl
            .migration
            .lock()
            .stopped
            .take()
            .ok_or_else(|| MigrateError::State("no state captured".into()))?;
        // Pages dirty when pre-copy ended, and since.
        let mut dirty = pending;
        dirty.merge(&self.collect()?);
        let final_pages = dirty.count();
        for (first, count) in dirty.runs(protocol::MAX_PAGES_PER_FRAME) {
            self.send_run(&mut s, first, count, false)?;
        }
        self.cut(&s, "stop")?;
        for chunk in stopped.blob.chunks(protocol::MAX_CONTROL_PAYLOAD as usize) {
            self.frame(&mut s, Kind::State, chunk)?;
        }
        let end = protocol::StateEnd {
            len: stopped.blob.len() as u64,
            crc: crc32fast::hash(&stopped.blob),
            paused_wall_ns: stopped.paused_wall_ns,
        };
        protocol::send(&mut s, Kind::StateEnd, &end)?;
        let sent = stopped.paused_at.elapsed();
        protocol::read_frame(&mut s)?.expect(Kind::Ready)?;
        log::debug!(
            "stopped: {final_pages} pages + {} KiB state sent {:.2} ms after pause, ready at {:.2} ms",
            stopped.blob.len() >> 10,
            ms(sent),
            ms(stopped.paused_at.elapsed())
        );
        self.cut(&s, "commit")?;

        // From here the destination may own the guest.
        let unknown = |e: MigrateError| MigrateError::Unknown(e.to_string());
        protocol::write_frame(&mut s, Kind::Commit, &[]).map_err(unknown)?;
        let ack: protocol::CommitAck = protocol::read_frame(&mut s)
            .and_then(|f| f.expect(Kind::CommitAck))
            .and_then(|f| f.decode())
            .map_err(unknown)?;
        let acked = Instant::now();
        Ok(Summary {
            to: self.req.addr.clone(),
            total_ms: ms(acked - t0),
            downtime_ms: ack.resume_wall_ns.saturating_sub(stopped.paused_wall_ns) as f64 / 1e6,
            downtime_src_ms: ms(acked - stopped.paused_at),
            bytes: self.bytes,
            rounds,
            forced_stop,
            final_pages,
        })
    }

    fn handshake(&mut self, s: &mut TcpStream) -> Result<(), MigrateError> {
        let mut hello = self.h.hello.clone();
        hello.nonce = protocol::nonce();
        if let Some(f) = &self.req.fake {
            match f.split_once('=').map(|(k, v)| (k, v.parse::<u64>())) {
                Some(("abi", Ok(v))) => hello.abi = v as u32,
                Some(("tsc_khz", Ok(v))) => hello.tsc_khz = v,
                _ => {
                    return Err(MigrateError::State(format!(
                        "DUET_MIGRATE_FAKE={f}: use abi=N or tsc_khz=N"
                    )))
                }
            }
        }
        protocol::send(s, Kind::Hello, &hello)?;
        let ch: protocol::Challenge = protocol::read_frame(s)?.expect(Kind::Challenge)?.decode()?;
        if !protocol::verify(self.key, b"dst", &hello.nonce, &ch.nonce, &ch.mac) {
            let why = "the destination does not hold the migration key";
            let _ = protocol::write_frame(s, Kind::Refuse, why.as_bytes());
            return Err(MigrateError::Rejected(why.into()));
        }
        let auth = protocol::Auth {
            mac: protocol::mac(self.key, b"src", &hello.nonce, &ch.nonce),
        };
        protocol::send(s, Kind::Auth, &auth)?;
        protocol::read_frame(s)?.expect(Kind::Accept)?;
        Ok(())
    }

    /// Dirty rounds until the rest fits the downtime budget or stops
    /// shrinking. Returns the rounds, whether stop-and-copy was forced, and
    /// the dirty set not yet sent (it goes with the guest stopped).
    fn precopy(
        &mut self,
        s: &mut TcpStream,
        start: Instant,
    ) -> Result<(u32, bool, DirtySet), MigrateError> {
        let budget = self.req.max_downtime_ms as f64;
        let mut round = 0;
        let mut stalls = 0;
        let mut best = u64::MAX;
        let mut round_start = start;
        loop {
            // Wait until the destination has applied the round: socket
            // buffers must not hide a backlog that would land in the downtime,
            // and the bandwidth measured is then end to end.
            protocol::write_frame(s, Kind::Sync, &[])?;
            protocol::read_frame(s)?.expect(Kind::SyncAck)?;
            let dirty = self.collect()?;
            let n = dirty.count();
            let elapsed = start.elapsed().as_secs_f64().max(1e-6);
            let bw = self.bytes as f64 / elapsed;
            let mib = (1u64 << 20) as f64;
            let p = Progress {
                round,
                sent_mib: self.bytes as f64 / mib,
                dirty_pages: n,
                dirty_rate_mib_s: (n * PAGE_SIZE) as f64
                    / mib
                    / round_start.elapsed().as_secs_f64().max(1e-6),
                bandwidth_mib_s: bw / mib,
                est_downtime_ms: (n * PAGE_SIZE) as f64 / bw * 1e3,
            };
            (self.progress)(&p);
            if n < best - best / 10 {
                best = n;
                stalls = 0;
            } else {
                stalls += 1;
            }
            if p.est_downtime_ms <= budget {
                return Ok((round, false, dirty));
            }
            if round >= MAX_ROUNDS || stalls >= STALL_ROUNDS {
                return Ok((round, true, dirty));
            }
            round += 1;
            round_start = Instant::now();
            for (first, count) in dirty.runs(protocol::MAX_PAGES_PER_FRAME) {
                self.send_run(s, first, count, false)?;
            }
        }
    }

    fn collect(&self) -> Result<DirtySet, MigrateError> {
        let pages = self.h.size / PAGE_SIZE;
        let bits = self
            .h
            .vm
            .get_dirty_log(0, self.h.size as usize)
            .map_err(|e| MigrateError::State(format!("KVM_GET_DIRTY_LOG failed: {e}")))?;
        let mut d = DirtySet::from_kvm(bits, pages);
        d.add(self.h.host_dirty.take());
        Ok(d)
    }

    /// Sends pages `first..first+count` (at most a frame's worth): non-zero
    /// sub-runs as pages, zero ones as zero runs (skipped when `fresh`: the
    /// destination's memory starts zeroed).
    fn send_run(
        &mut self,
        s: &mut TcpStream,
        first: u64,
        count: u64,
        fresh: bool,
    ) -> Result<(), MigrateError> {
        let mut at = first;
        let end = first + count;
        let mut buf = vec![0u8; (protocol::MAX_PAGES_PER_FRAME * PAGE_SIZE) as usize + 16];
        while at < end {
            let n = (end - at).min(protocol::MAX_PAGES_PER_FRAME);
            let data = &mut buf[16..16 + (n * PAGE_SIZE) as usize];
            self.h
                .mem
                .read_slice(data, GuestAddress(at * PAGE_SIZE))
                .map_err(|e| MigrateError::State(format!("reading guest memory: {e}")))?;
            let zero: Vec<bool> = data
                .chunks(PAGE_SIZE as usize)
                .map(|p| p.iter().all(|&b| b == 0))
                .collect();
            let mut i = 0u64;
            while i < n {
                let z = zero[i as usize];
                let mut j = i + 1;
                while j < n && zero[j as usize] == z {
                    j += 1;
                }
                if z && !fresh {
                    let h = protocol::pages_header(at + i, j - i);
                    self.frame(s, Kind::ZeroPages, &h)?;
                } else if !z {
                    let lo = (i * PAGE_SIZE) as usize;
                    let hi = (j * PAGE_SIZE) as usize;
                    let mut payload = Vec::with_capacity(16 + hi - lo);
                    payload.extend_from_slice(&protocol::pages_header(at + i, j - i));
                    payload.extend_from_slice(&buf[16 + lo..16 + hi]);
                    self.frame(s, Kind::Pages, &payload)?;
                }
                i = j;
            }
            at += n;
        }
        Ok(())
    }
}
