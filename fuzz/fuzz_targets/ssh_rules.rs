//! `cargo +nightly fuzz run ssh_rules`: see [`sluice_fuzz::entries::ssh_rules`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::ssh_rules(data));
