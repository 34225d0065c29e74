#![no_main]
//! See `postern_fuzz::mta_sts` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::mta_sts::run(data));
