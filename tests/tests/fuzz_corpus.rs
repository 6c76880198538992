//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`:
//! hand-made seeds and `regress-*` inputs from crashes fuzzing found)
//! through the same entry functions the cargo-fuzz targets call, so the
//! normal suite catches a regression without libFuzzer or nightly.
//!
//! No root, no daemon: these are the parsers alone.
use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
};

#[path = "../../fuzz/src/entries.rs"]
#[allow(dead_code)]
mod entries;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn files(target: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_replays_without_a_crash() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, entry) in entries::TARGETS {
        let files = files(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} has no seeds");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            replayed += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| entry(&data))) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!(
                    "{target}/{}: {why}",
                    file.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} corpus inputs crashed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn seeds_reach_the_deep_paths() {
    use entries::seeds::*;
    // The masking invariants hold on a real-looking result.
    let mut input = vec![0u8];
    input.extend(row_description(&["id", "ssn"]));
    input.extend(data_row(&[Some(b"1"), Some(b"123-45-6789")]));
    entries::pg_backend_mask(&input);
    // A login followed by a statement is parsed through to the classifier.
    let mut fe = startup(&[("user", "agent")]);
    fe.extend(message(b'Q', b"SELECT 1\0"));
    entries::pg_frontend(&fe);
}

/// Found by the `json_mask` fuzz target (input
/// `fuzz/corpus/json_mask/regress-number-reround`: `622e222`): masking
/// re-serialises the whole body, and unmasked numbers came out changed.
/// With serde_json's arbitrary precision every digit survives; only the
/// exponent's spelling is normalised (`622e222` → `622e+222`, the same
/// JSON number).
#[test]
fn json_masking_leaves_unmasked_numbers_exactly_as_the_upstream_sent_them() {
    let body = br#"{"ssn":"123-45-6789","n":622e222,"id":123456789012345678901234567890,"amount":0.1000000000000000055511151231257827,"small":1.5}"#;
    let (out, report) =
        sluice::proxy::http::json_mask::mask_json(body, &["ssn".to_string()]).unwrap();
    assert_eq!(report.count, 1);
    let out = String::from_utf8(out).unwrap();
    for number in [
        "622e+222",
        "123456789012345678901234567890",
        "0.1000000000000000055511151231257827",
        "1.5",
    ] {
        assert!(out.contains(number), "{number} was rewritten: {out}");
    }
}
