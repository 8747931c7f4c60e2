//! A JSON record of any kind, as a Kafka record value and as a JSON-lines file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    stockcast::source::files::exercise(pick, false, rest);
});
