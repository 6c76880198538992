//! `cargo +nightly fuzz run kube_stream`: see [`sluice_fuzz::entries::kube_stream`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::entries::kube_stream(data));
