//! `cargo +nightly fuzz run pg_backend_mask`: see [`sluice_fuzz::entries::pg_backend_mask`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::pg_backend_mask(data));
