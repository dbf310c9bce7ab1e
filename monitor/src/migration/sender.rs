//! The source's sending half: one attempt over one connection — handshake,
//! pre-copy rounds, the stopped guest's last pages and state, commit.
//! Runs on the migration thread; the vCPU thread is reached only through
//! [`Step`] requests.

use super::protocol::{self, Kind};
use super::source::{stop_guest, Handoff};
use super::{ms, MigrateError, MigrateRequest, Progress, Summary, MAX_ROUNDS, STALL_ROUNDS};
use crate::memory::DirtySet;
use crate::vmm::Control;
use duet_abi::PAGE_SIZE;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
/// Socket timeout for every read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to retry connecting while the destination starts.
const CONNECT_FOR: Duration = Duration::from_secs(5);

/// One attempt: what it sends with and what it counted.
pub(super) struct Attempt<'a> {
    ctl: &'a Control,
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
        ctl: &'a Control,
        req: &'a MigrateRequest,
        key: &'a [u8],
        h: &'a Handoff,
        progress: &'a mut dyn FnMut(&Progress),
    ) -> Self {
        Attempt {
            ctl,
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

    fn frame(&mut self, s: &mut TcpStream, kind: Kind, payload: &[u8]) -> Result<(), MigrateError> {
        self.bytes += (protocol::FRAME_HEADER + payload.len()) as u64;
        protocol::write_frame(s, kind, payload)
    }

    /// Runs the attempt to commit (or the first failure).
    pub(super) fn run(&mut self) -> Result<Summary, MigrateError> {
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
        self.cut(&s, "precopy")?;
        let (rounds, forced_stop, pending, pending_disks) = self.precopy(&mut s, start)?;

        // Stop: the vCPU thread pauses the guest after its last exit.
        let stopped = stop_guest(self.ctl, self.req.copy_disks)?;
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
    /// the dirty sets (memory, then each copied disk) not yet sent (they go
    /// with the guest stopped).
    #[allow(clippy::type_complexity)]
    fn precopy(
        &mut self,
        s: &mut TcpStream,
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
            protocol::write_frame(s, Kind::Sync, &[])?;
            protocol::read_frame(s)?.expect(Kind::SyncAck)?;
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

    fn send_disk_sets(&mut self, s: &mut TcpStream, sets: &[DirtySet]) -> Result<(), MigrateError> {
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
        s: &mut TcpStream,
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
        let mut buf = std::mem::take(&mut self.dbuf);
        buf.resize(len, 0);
        if let Err(e) = d.file.read_exact_at(&mut buf, offset) {
            self.dbuf = buf;
            return Err(MigrateError::State(format!("reading disk {i}: {e}")));
        }
        let zero: Vec<bool> = buf
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
                self.bytes += (protocol::FRAME_HEADER + head.len() + hi - lo) as u64;
                protocol::write_frame2(s, Kind::Disk, &head, &buf[lo..hi])
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
        s: &mut TcpStream,
        first: u64,
        count: u64,
        fresh: bool,
    ) -> Result<(), MigrateError> {
        // One buffer for the whole attempt (taken out so `self` stays free).
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize((protocol::MAX_PAGES_PER_FRAME * PAGE_SIZE) as usize, 0);
        let r = self.send_pages(s, first, count, fresh, &mut buf);
        self.buf = buf;
        r
    }

    fn send_pages(
        &mut self,
        s: &mut TcpStream,
        first: u64,
        count: u64,
        fresh: bool,
        buf: &mut [u8],
    ) -> Result<(), MigrateError> {
        let mut at = first;
        let end = first + count;
        while at < end {
            let n = (end - at).min(protocol::MAX_PAGES_PER_FRAME);
            let data = &mut buf[..(n * PAGE_SIZE) as usize];
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
                    let lo = (i * PAGE_SIZE) as usize;
                    let hi = (j * PAGE_SIZE) as usize;
                    let head = protocol::pages_header(at + i, j - i);
                    self.bytes += (protocol::FRAME_HEADER + 16 + hi - lo) as u64;
                    protocol::write_frame2(s, Kind::Pages, &head, &buf[lo..hi])?;
                }
                i = j;
            }
            at += n;
        }
        Ok(())
    }
}
