//! A CSV file (header and rows) of any record kind.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    stockcast::source::files::exercise(pick, true, rest);
});
