//! The snapshot state file, from bytes to the guest's rebuilt structures.
#![no_main]

use duet_monitor::fuzzing::snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: snapshot::Input| snapshot::run(&input));
