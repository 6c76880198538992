//! `cargo +nightly fuzz run kube_request`: see [`sluice_fuzz::entries::kube_request`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::kube_request(data));
