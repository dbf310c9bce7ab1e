//! The --mem, --env, --disk and --net value parsers.
#![no_main]

use duet_monitor::fuzzing::cli;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: cli::Input| cli::run(&input));
