//! A migration destination's stream: handshake, sealed frames, decoders, state.
#![no_main]

use duet_monitor::fuzzing::migration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: migration::Input| migration::run(&input));
