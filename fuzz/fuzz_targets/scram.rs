//! `cargo +nightly fuzz run scram`: see [`sluice_fuzz::entries::scram`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::scram(data));
