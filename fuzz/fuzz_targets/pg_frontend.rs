//! `cargo +nightly fuzz run pg_frontend`: see [`sluice_fuzz::entries::pg_frontend`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::pg_frontend(data));
