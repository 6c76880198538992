//! `cargo +nightly fuzz run mysql_client`: see [`sluice_fuzz::entries::mysql_client`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::mysql_client(data));
