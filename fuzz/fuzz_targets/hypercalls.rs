//! Hypercall dispatch against real guest memory, no VM (structure-aware guest steps).
#![no_main]

use duet_monitor::fuzzing::hypercalls;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: hypercalls::Input| hypercalls::run(&input));
