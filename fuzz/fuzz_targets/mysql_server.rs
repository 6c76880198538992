//! `cargo +nightly fuzz run mysql_server`: see [`sluice_fuzz::entries::mysql_server`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::mysql_server(data));
