//! The source's sending half: one attempt over one connection — handshake,
//! pre-copy rounds, the stopped guest's last pages and state, commit.
//! Runs on the migration thread; the vCPU thread is reached only through
//! [`Step`] requests.

use super::protocol::{self, Frame, Kind, FRAME_HEADER, PAGES_HEADER, SEALED_OVERHEAD, TAG_LEN};
use super::session::{Role, Session, Transcript};
use super::{ms, MigrateError, MigrateRequest, Progress, Summary, MAX_ROUNDS, STALL_ROUNDS};
use crate::devices::CopySource;
use crate::memory::{DirtySet, HostDirty, MemReader};
use crate::vm::DirtyLog;
use duet_abi::PAGE_SIZE;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};
/// Socket timeout for every read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to retry connecting while the destination starts.
const CONNECT_FOR: Duration = Duration::from_secs(5);

/// What the sender reads, handed over by the vCPU thread's start job.
pub struct Handoff {
    pub(super) mem: MemReader,
    pub(super) dirty: DirtyLog,
    pub(super) host_dirty: Arc<HostDirty>,
    pub(super) resident: Vec<(u64, u64)>,
    pub(super) hello: protocol::Hello,
    /// The disks whose contents are copied (`--copy-disks`), in device order.
    pub(super) disks: Vec<CopySource>,
}

/// The stopped guest's state, from the vCPU thread's stop job.
pub(super) struct Stopped {
    pub(super) blob: Vec<u8>,
    pub(super) paused_wall_ns: u64,
    pub(super) paused_at: Instant,
}

/// One attempt: what it sends with and what it counted.
pub(super) struct Attempt<'a> {
    /// Pauses the guest and captures it (a job on the vCPU thread).
    stop: &'a dyn Fn() -> Result<Stopped, MigrateError>,
    req: &'a MigrateRequest,
    key: &'a [u8],
    h: &'a Handoff,
    bytes: u64,
    progress: &'a mut dyn FnMut(&Progress),
    buf: Vec<u8>,
    /// Disk bytes read for one frame (`--copy-disks`).
    dbuf: Vec<u8>,
    /// The last phase completed (marked by [`Attempt::cut`]), for
    /// [`Attempt::phase`].
    done: Option<&'static str>,
}

/// Disks are tracked and copied in units of this many bytes.
const DISK_UNIT: u64 = 4096;
/// Room before the first page read into the page buffer: a page run is
/// sealed where it lies, its frame and run headers written just before it
/// (here, or over the tail of the zero page before it, which is not sent).
const PAGES_FRONT: usize = FRAME_HEADER + PAGES_HEADER;
/// The same for disk runs.
const DISK_FRONT: usize = FRAME_HEADER + protocol::DISK_HEADER;

/// The connection after the handshake: every frame sealed.
struct Link {
    tcp: TcpStream,
    session: Session,
}

impl Link {
    fn write(&mut self, kind: Kind, payload: &[u8]) -> Result<(), MigrateError> {
        let r = self.session.write(&mut self.tcp, kind, payload);
        self.why_broken(r)
    }

    /// Seals `frame` in place ([`Session::seal`]) and writes it.
    fn write_sealed(&mut self, kind: Kind, frame: &mut [u8]) -> Result<(), MigrateError> {
        use std::io::Write;
        self.session.seal(kind, frame)?;
        let r = self.tcp.write_all(frame).map_err(MigrateError::Connection);
        self.why_broken(r)
    }

    /// A write failed because the destination hung up: it usually said why
    /// first (a refused frame, say), so that reason replaces "broken pipe".
    fn why_broken(&mut self, r: Result<(), MigrateError>) -> Result<(), MigrateError> {
        let Err(MigrateError::Connection(e)) = r else {
            return r;
        };
        let _ = self.tcp.set_read_timeout(Some(Duration::from_secs(1)));
        match self.read() {
            Ok(f) if f.kind == Kind::Refuse => {
                Err(MigrateError::Refused(protocol::refusal(&f.payload)))
            }
            _ => Err(MigrateError::Connection(e)),
        }
    }

    fn read(&mut self) -> Result<Frame, MigrateError> {
        self.session.read(&mut self.tcp)
    }
}

fn connect(addr: &str) -> Result<TcpStream, MigrateError> {
    let deadline = Instant::now() + CONNECT_FOR;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(MigrateError::Connect)?
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
            return Err(MigrateError::Connect(e));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl<'a> Attempt<'a> {
    /// An attempt for `req` with the vCPU thread's hand-over `h`.
    pub(super) fn new(
        stop: &'a dyn Fn() -> Result<Stopped, MigrateError>,
        req: &'a MigrateRequest,
        key: &'a [u8],
        h: &'a Handoff,
        progress: &'a mut dyn FnMut(&Progress),
    ) -> Self {
        Attempt {
            stop,
            req,
            key,
            h,
            bytes: 0,
            progress,
            buf: Vec::new(),
            dbuf: Vec::new(),
            done: None,
        }
    }

    /// What the attempt was doing, for errors ("during pre-copy").
    pub(super) fn phase(&self) -> &'static str {
        match self.done {
            None => "during the handshake",
            Some("handshake" | "precopy") => "during pre-copy",
            Some("stop") => "while the guest's state was sent",
            Some(_) => "during commit",
        }
    }

    /// Marks `phase` done; test hook (`test-hooks` builds): cut the
    /// connection there.
    #[cfg(feature = "test-hooks")]
    fn cut(&mut self, s: &TcpStream, phase: &'static str) -> Result<(), MigrateError> {
        self.done = Some(phase);
        if self.req.fail_at.as_deref() == Some(phase) {
            let _ = s.shutdown(std::net::Shutdown::Both);
            return Err(MigrateError::Injected(phase.into()));
        }
        Ok(())
    }

    /// Marks `phase` done.
    #[cfg(not(feature = "test-hooks"))]
    #[inline]
    fn cut(&mut self, _: &TcpStream, phase: &'static str) -> Result<(), MigrateError> {
        self.done = Some(phase);
        Ok(())
    }

    fn frame(&mut self, s: &mut Link, kind: Kind, payload: &[u8]) -> Result<(), MigrateError> {
        self.bytes += (SEALED_OVERHEAD + payload.len()) as u64;
        s.write(kind, payload)
    }

    /// Runs the attempt to commit (or the first failure).
    pub(super) fn run(&mut self) -> Result<Summary, MigrateError> {
        let t0 = Instant::now();
        let mut tcp = connect(&self.req.addr)?;
        tcp.set_nodelay(true).map_err(MigrateError::Connection)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(MigrateError::Connection)?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(MigrateError::Connection)?;
        let session = self.handshake(&mut tcp)?;
        let mut s = Link { tcp, session };
        s.read()?.expect(Kind::Accept)?;
        self.cut(&s.tcp, "handshake")?;

        // Round 0: every populated page; the destination starts zeroed.
        let start = Instant::now();
        for &(first, count) in &self.h.resident {
            self.send_run(&mut s, first, count, true)?;
        }
        // And every disk whole (the destination's copy may hold anything).
        for i in 0..self.h.disks.len() {
            let units = self.h.disks[i].capacity.div_ceil(DISK_UNIT);
            let per = protocol::MAX_DISK_RUN / DISK_UNIT;
            let mut first = 0;
            while first < units {
                self.send_disk_run(&mut s, i, first, per.min(units - first))?;
                first += per;
            }
        }
        self.cut(&s.tcp, "precopy")?;
        let (rounds, forced_stop, pending, pending_disks) = self.precopy(&mut s, start)?;

        // Stop: the vCPU thread pauses the guest after its last exit.
        let stopped = (self.stop)()?;
        // Pages dirty when pre-copy ended, and since.
        let mut dirty = pending;
        dirty.merge(&self.collect()?);
        let mut final_pages = dirty.count();
        for (first, count) in dirty.runs(protocol::MAX_PAGES_PER_FRAME) {
            self.send_run(&mut s, first, count, false)?;
        }
        // The disks' last writes (the guest is stopped: the set is final).
        let mut disks = pending_disks;
        for (d, now) in disks.iter_mut().zip(self.collect_disks()) {
            d.merge(&now);
        }
        final_pages += disks.iter().map(DirtySet::count).sum::<u64>();
        self.send_disk_sets(&mut s, &disks)?;
        self.cut(&s.tcp, "stop")?;
        for chunk in stopped.blob.chunks(protocol::MAX_CONTROL_PAYLOAD as usize) {
            self.frame(&mut s, Kind::State, chunk)?;
        }
        let end = protocol::StateEnd {
            len: stopped.blob.len() as u64,
            crc: crc32fast::hash(&stopped.blob),
            paused_wall_ns: stopped.paused_wall_ns,
        };
        self.frame(
            &mut s,
            Kind::StateEnd,
            &protocol::encode(Kind::StateEnd, &end)?,
        )?;
        let sent = stopped.paused_at.elapsed();
        s.read()?.expect(Kind::Ready)?;
        log::debug!(
            "stopped: {final_pages} pages + {} KiB state sent {:.2} ms after pause, ready at {:.2} ms",
            stopped.blob.len() >> 10,
            ms(sent),
            ms(stopped.paused_at.elapsed())
        );
        self.cut(&s.tcp, "commit")?;

        // From here the destination may own the guest.
        let unknown = |e: MigrateError| MigrateError::Unknown(e.to_string());
        s.write(Kind::Commit, &[]).map_err(unknown)?;
        let ack: protocol::CommitAck = s
            .read()
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

    /// Proves the key both ways over a transcript of the handshake and
    /// returns the session bound to it (the destination's first sealed
    /// frame, Accept or Refuse, follows).
    fn handshake(&mut self, s: &mut TcpStream) -> Result<Session, MigrateError> {
        let mut hello = self.h.hello.clone();
        hello.nonce = protocol::nonce();
        #[cfg(feature = "test-hooks")]
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
        let mut t = Transcript::default();
        t.send(s, Kind::Hello, &hello)?;
        let after_hello = t.hash();
        let ch: protocol::Challenge = t.recv(s)?.expect(Kind::Challenge)?.decode()?;
        if !protocol::verify(self.key, b"dst", &after_hello, &ch.nonce, &ch.mac) {
            let why = "the destination does not hold the migration key (or the handshake was altered on the way)";
            let _ = protocol::write_frame(s, Kind::Refuse, why.as_bytes());
            return Err(MigrateError::Rejected(why.into()));
        }
        let auth = protocol::Auth {
            mac: protocol::mac(self.key, b"src", &t.hash(), &[]),
        };
        t.send(s, Kind::Auth, &auth)?;
        Ok(Session::new(
            self.key,
            Role::Source,
            &hello.nonce,
            &ch.nonce,
            &t.hash(),
        ))
    }

    /// Dirty rounds until the rest fits the downtime budget or stops
    /// shrinking. Returns the rounds, whether stop-and-copy was forced, and
    /// the dirty sets (memory, then each copied disk) not yet sent (they go
    /// with the guest stopped).
    #[allow(clippy::type_complexity)]
    fn precopy(
        &mut self,
        s: &mut Link,
        start: Instant,
    ) -> Result<(u32, bool, DirtySet, Vec<DirtySet>), MigrateError> {
        let budget = self.req.max_downtime_ms as f64;
        let mut round = 0;
        let mut stalls = 0;
        let mut best = u64::MAX;
        let mut round_start = start;
        loop {
            // Wait until the destination has applied the round: socket
            // buffers must not hide a backlog that would land in the downtime,
            // and the bandwidth measured is then end to end.
            s.write(Kind::Sync, &[])?;
            s.read()?.expect(Kind::SyncAck)?;
            let dirty = self.collect()?;
            let disks = self.collect_disks();
            // Memory pages and disk units alike are 4 KiB to send.
            let n = dirty.count() + disks.iter().map(DirtySet::count).sum::<u64>();
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
                return Ok((round, false, dirty, disks));
            }
            if round >= MAX_ROUNDS || stalls >= STALL_ROUNDS {
                return Ok((round, true, dirty, disks));
            }
            round += 1;
            round_start = Instant::now();
            for (first, count) in dirty.runs(protocol::MAX_PAGES_PER_FRAME) {
                self.send_run(s, first, count, false)?;
            }
            self.send_disk_sets(s, &disks)?;
        }
    }

    fn collect(&self) -> Result<DirtySet, MigrateError> {
        let pages = self.h.mem.size() / PAGE_SIZE;
        let bits = self.h.dirty.take().map_err(MigrateError::State)?;
        let mut d = DirtySet::from_kvm(bits, pages);
        d.add(self.h.host_dirty.take());
        Ok(d)
    }

    /// The disk units written since the last call, one set per copied disk.
    fn collect_disks(&self) -> Vec<DirtySet> {
        self.h
            .disks
            .iter()
            .map(|d| {
                let units = d.capacity.div_ceil(DISK_UNIT);
                let mut set = DirtySet::from_kvm(Vec::new(), units);
                set.add(d.dirty.take());
                set
            })
            .collect()
    }

    fn send_disk_sets(&mut self, s: &mut Link, sets: &[DirtySet]) -> Result<(), MigrateError> {
        for (i, set) in sets.iter().enumerate() {
            for (first, count) in set.runs(protocol::MAX_DISK_RUN / DISK_UNIT) {
                self.send_disk_run(s, i, first, count)?;
            }
        }
        Ok(())
    }

    /// Sends disk `i`'s units `first..first+count` (at most
    /// [`protocol::MAX_DISK_RUN`] bytes, cut at the disk's end): zero
    /// sub-runs as [`Kind::DiskZero`], the rest as [`Kind::Disk`].
    fn send_disk_run(
        &mut self,
        s: &mut Link,
        i: usize,
        first: u64,
        count: u64,
    ) -> Result<(), MigrateError> {
        use std::os::unix::fs::FileExt;
        let d = &self.h.disks[i];
        let offset = first * DISK_UNIT;
        let end = ((first + count) * DISK_UNIT).min(d.capacity);
        if offset >= end {
            return Ok(());
        }
        let len = (end - offset) as usize;
        // [room | the run's bytes | tag room]: each non-zero sub-run is
        // sealed where it lies (see `send_pages`).
        let mut buf = std::mem::take(&mut self.dbuf);
        buf.resize(DISK_FRONT + len + TAG_LEN, 0);
        let data = &mut buf[DISK_FRONT..DISK_FRONT + len];
        if let Err(e) = d.file.read_exact_at(data, offset) {
            self.dbuf = buf;
            return Err(MigrateError::State(format!("reading disk {i}: {e}")));
        }
        let zero: Vec<bool> = data
            .chunks(DISK_UNIT as usize)
            .map(|u| u.iter().all(|&b| b == 0))
            .collect();
        let mut r = Ok(());
        let mut a = 0;
        while a < zero.len() && r.is_ok() {
            let mut b = a + 1;
            while b < zero.len() && zero[b] == zero[a] {
                b += 1;
            }
            let lo = a * DISK_UNIT as usize;
            let hi = (b * DISK_UNIT as usize).min(len);
            let head = protocol::disk_header(i as u32, offset + lo as u64, (hi - lo) as u64);
            r = if zero[a] {
                self.frame(s, Kind::DiskZero, &head)
            } else {
                let (lo, hi) = (DISK_FRONT + lo, DISK_FRONT + hi);
                buf[lo - head.len()..lo].copy_from_slice(&head);
                let frame = &mut buf[lo - DISK_FRONT..hi + TAG_LEN];
                self.bytes += frame.len() as u64;
                s.write_sealed(Kind::Disk, frame)
            };
            a = b;
        }
        self.dbuf = buf;
        r
    }

    /// Sends pages `first..first+count` (at most a frame's worth): non-zero
    /// sub-runs as pages, zero ones as zero runs (skipped when `fresh`: the
    /// destination's memory starts zeroed).
    fn send_run(
        &mut self,
        s: &mut Link,
        first: u64,
        count: u64,
        fresh: bool,
    ) -> Result<(), MigrateError> {
        // One buffer for the whole attempt (taken out so `self` stays free).
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(
            PAGES_FRONT + (protocol::MAX_PAGES_PER_FRAME * PAGE_SIZE) as usize + TAG_LEN,
            0,
        );
        let r = self.send_pages(s, first, count, fresh, &mut buf);
        self.buf = buf;
        r
    }

    /// Reads pages into `buf` after [`PAGES_FRONT`] bytes of room and seals
    /// each non-zero sub-run where it lies: its frame and run headers go in
    /// the 32 bytes before it (the room, or the tail of a zero page: a run
    /// is as long as it can be, so the page before it is zero and only its
    /// count is sent) and its tag in the 16 after (the head of the next,
    /// zero, page, or the room at the end). Guest bytes are copied once,
    /// from guest memory, and encrypted in place.
    fn send_pages(
        &mut self,
        s: &mut Link,
        first: u64,
        count: u64,
        fresh: bool,
        buf: &mut [u8],
    ) -> Result<(), MigrateError> {
        let mut at = first;
        let end = first + count;
        while at < end {
            let n = (end - at).min(protocol::MAX_PAGES_PER_FRAME);
            let data = &mut buf[PAGES_FRONT..PAGES_FRONT + (n * PAGE_SIZE) as usize];
            self.h
                .mem
                .read(at * PAGE_SIZE, data)
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
                    let lo = PAGES_FRONT + (i * PAGE_SIZE) as usize;
                    let hi = PAGES_FRONT + (j * PAGE_SIZE) as usize;
                    let head = protocol::pages_header(at + i, j - i);
                    buf[lo - PAGES_HEADER..lo].copy_from_slice(&head);
                    let frame = &mut buf[lo - PAGES_FRONT..hi + TAG_LEN];
                    self.bytes += frame.len() as u64;
                    s.write_sealed(Kind::Pages, frame)?;
                }
                i = j;
            }
            at += n;
        }
        Ok(())
    }
}
