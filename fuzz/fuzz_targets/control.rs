//! Control-socket request lines, parsed and served.
#![no_main]

use duet_monitor::fuzzing::control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: control::Input| control::run(&input));
