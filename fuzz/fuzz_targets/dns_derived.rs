#![no_main]
//! See `postern_fuzz::dns_derived` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::dns_derived::run(data));
