#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_fuzzing::envelope(data));
