//! `cargo +nightly fuzz run json_mask`: see [`sluice_fuzz::entries::json_mask`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::json_mask(data));
