#![no_main]
//! See `postern_fuzz::pem_import` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::pem_import::run(data));
