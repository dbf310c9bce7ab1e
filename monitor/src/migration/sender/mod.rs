//! The source's sending half: one attempt over one connection — handshake,
//! pre-copy rounds, the stopped guest's last pages and state, commit.
//! Runs on the migration thread; the vCPU thread is reached only through
//! [`Step`] requests.

use super::protocol::{self, Kind, SEALED_OVERHEAD};
use super::session::{Role, Session, Transcript};
use super::{ms, MigrateError, MigrateRequest, Progress, Summary, MAX_ROUNDS, STALL_ROUNDS};
use crate::devices::CopySource;
use crate::memory::{DirtySet, HostDirty, MemReader};
use crate::vm::DirtyLog;
use duet_abi::PAGE_SIZE;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

mod link;
mod runs;

use link::{connect, Link, IO_TIMEOUT};

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
            let units = self.h.disks[i].capacity.div_ceil(runs::DISK_UNIT);
            let per = protocol::MAX_DISK_RUN / runs::DISK_UNIT;
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
}
