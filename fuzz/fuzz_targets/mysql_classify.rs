//! `cargo +nightly fuzz run mysql_classify`: see [`sluice_fuzz::entries::mysql_classify`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::mysql_classify(data));
