#![no_main]
//! See `postern_fuzz::node_config` for the input layout and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::node_config::run(data));
