//! The monitor's public contract: the numbers and names scripts, tests and
//! the docs rely on (README's exit statuses, a snapshot directory's file
//! names, the state file's header layout, documented limits). Tests use
//! only this module of the monitor's library.

/// The monitor's exit statuses (documented in the README).
///
/// A guest that calls `exit(n)` makes `duet run` exit with `n` (0..=255).
/// The monitor's own outcomes use statuses shells already associate with
/// them.
pub mod status {
    /// Usage error: the command line itself is wrong (clap's own status):
    /// an unknown, missing or conflicting option, an option that does not
    /// apply, a value that does not parse.
    pub const USAGE: u8 = 2;
    /// The monitor did not start the guest (or `duet ctl`'s request
    /// failed): the command line is well-formed but what it names cannot
    /// be used (image, disk, snapshot, template, socket path, port, KVM).
    pub const MONITOR_ERROR: u8 = 125;
    /// The guest aborted (panicked): like SIGABRT, 128 + 6.
    pub const GUEST_ABORT: u8 = 134;
    /// The guest took a CPU exception: like SIGSEGV, 128 + 11. A
    /// privileged instruction, or `in`/`out` on a port that is not a
    /// hypercall port, is a #GP in ring 3, so it ends here too.
    pub const GUEST_FAULT: u8 = 139;
    /// The VM stopped in a way a well-behaved guest never causes: triple
    /// fault, a read of a hypercall port, a hypercall `out` that is not
    /// 32-bit, an unusable argument struct, an emulation failure.
    pub const VM_FAILURE: u8 = 140;
    /// `duet run` whose guest was live-migrated away: it runs elsewhere now
    /// (`duet: guest migrated to ADDR` on stderr). Guests should not use it.
    pub const MIGRATED: u8 = 120;
    /// `SIGINT`: the monitor stopped the guest at once (128 + 2).
    pub const SIGINT: u8 = 130;
    /// `SIGTERM`: the guest did not exit within the grace period (128 + 15).
    pub const SIGTERM: u8 = 143;
    /// A monitor thread made a system call its seccomp list does not
    /// allow (`duet: seccomp: ...` on stderr names the thread and the
    /// call): like SIGSYS, 128 + 31. A monitor bug or an attack.
    pub const SECCOMP: u8 = 159;

    /// The monitor stopped the guest because of signal `sig`: 128 + `sig`,
    /// as a shell reports a process killed by it.
    pub fn terminated(sig: i32) -> u8 {
        (128 + sig).clamp(0, 255) as u8
    }

    /// The exit-status table, row by row as README.md shows it (status,
    /// meaning; the README adds only code formatting). `duet --help` prints
    /// it, and a test checks the README's table against it and provokes
    /// every row.
    pub const TABLE: &[(&str, &str)] = &[
        (
            "0-255",
            "the guest called exit(status) (or returned from main)",
        ),
        (
            "2",
            "usage error, before anything runs: an unknown, missing or conflicting option, an option that does not apply (run IMAGE --clones 2), a value that does not parse (--mem 5M); the usage is printed",
        ),
        (
            "125",
            "the monitor did not start the guest: something the command line names cannot be used (an image, disk, snapshot or template missing or bad, an --api path or a port in use (--incoming, --gdb), no KVM); also duet ctl and duet template when they fail",
        ),
        (
            "134",
            "the guest panicked (message, location and backtrace on stderr)",
        ),
        (
            "139",
            "the guest took a CPU exception (vector, registers, symbolized backtrace on stderr), int3 included (without GDB); a privileged instruction, or in/out on a port that is not a hypercall port, is a #GP",
        ),
        (
            "140",
            "the VM failed otherwise: triple fault, a read of a hypercall port, a hypercall out that is not 32-bit, an argument struct the monitor cannot read or write; or GDB's kill",
        ),
        (
            "120",
            "the guest was live-migrated away (duet: guest migrated to ADDR on stderr; docs/migration.md)",
        ),
        (
            "143",
            "SIGTERM: the monitor asked the guest to shut down and it had not exited after --stop-timeout seconds (default 5), or a second SIGTERM came; also a paused guest, or one not started yet",
        ),
        (
            "130",
            "SIGINT (Ctrl-C): the monitor stopped the guest at once",
        ),
        (
            "159",
            "a monitor thread made a system call its seccomp list does not allow (duet: seccomp: on stderr names the thread and the call; docs/security.md): a monitor bug or an attack",
        ),
    ];
}

/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// The state file's layout (`docs/snapshots.md`), for tools and for tests
/// that craft damaged files.
pub mod statefile {
    /// Magic at the start of a state file.
    pub const MAGIC: [u8; 8] = *b"DUETSNAP";
    /// Version of the layout (header, sections, payload structs).
    pub const FORMAT_VERSION: u32 = 2;
    /// Header size; its CRC32 covers bytes `0..HEADER_SIZE - 4`.
    pub const HEADER_SIZE: usize = 80;
    /// Offset of the format version (u32, little-endian).
    pub const VERSION_OFFSET: usize = 8;
    /// Offset of the ABI version (u32, little-endian).
    pub const ABI_OFFSET: usize = 12;
    /// Offset of the CPU vendor string (12 bytes).
    pub const VENDOR_OFFSET: usize = 16;
    /// Offset of the six CPUID feature words (u32 each, little-endian):
    /// 1 ECX, 1 EDX, 7.0 EBX, 7.0 ECX, 7.0 EDX, 0x8000_0001 ECX.
    pub const FEATURES_OFFSET: usize = 28;
    /// Offset of the guest's TSC rate in kHz (u64, little-endian).
    pub const TSC_OFFSET: usize = 56;
    /// Offset of the snapshot id (u64, little-endian), shared with the
    /// memory file.
    pub const ID_OFFSET: usize = 64;
    /// Offset of the section count (u32, little-endian).
    pub const COUNT_OFFSET: usize = 72;
    /// Offset of the header's CRC32 (u32, little-endian) over the bytes
    /// before it.
    pub const CRC_OFFSET: usize = 76;
    /// Each section's header: tag u32, reserved u32, length u64, CRC32 u32,
    /// reserved u32.
    pub const SECTION_HEADER: usize = 24;
}

/// Live migration's documented limits.
pub mod migration {
    /// Pre-copy rounds after the full copy, at most.
    pub const MAX_ROUNDS: u32 = 30;
    /// Rounds in a row that do not get the dirty set 10% below its best so
    /// far before stop-and-copy.
    pub const STALL_ROUNDS: u32 = 3;
    /// Phases a test may cut the connection at (`DUET_MIGRATE_FAIL`, in
    /// monitors built with the `test-hooks` feature only).
    pub const FAIL_PHASES: [&str; 4] = ["handshake", "precopy", "stop", "commit"];
}

/// Guest-physical addresses `docs/architecture.md`'s memory table
/// documents, for tests of hostile guests (guests learn the layout from
/// the boot info, never from these).
pub mod layout {
    pub use crate::layout::{EXCEPTION_STUBS, IDT};
}
