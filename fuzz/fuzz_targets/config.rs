//! A config file, resolved, with an environment override taken from its last line.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stockcast::config::exercise(data);
});
