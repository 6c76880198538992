//! `cargo +nightly fuzz run http_token`: see [`sluice_fuzz::entries::http_token`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::http_token(data));
