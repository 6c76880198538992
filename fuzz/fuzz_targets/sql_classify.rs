//! `cargo +nightly fuzz run sql_classify`: see [`sluice_fuzz::entries::sql_classify`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::sql_classify(data));
