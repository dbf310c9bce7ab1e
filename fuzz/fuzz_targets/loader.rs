//! The image loader: ELF parsing, validation, loading, symbols.
#![no_main]

use duet_monitor::fuzzing::loader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: loader::Input| loader::run(&input));
