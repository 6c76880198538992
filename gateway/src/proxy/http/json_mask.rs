//! Masking JSON fields in HTTP responses (DESIGN.md §4 `mask`, RFC 8259).
//!
//! A mask entry is a key name (`ssn`), which matches that key at any depth,
//! or a dotted path (`card.number`), which matches where the object keys
//! leading to a value end with those components (`customer.card.number`
//! included). Arrays are transparent, so arrays of objects are covered.
//! A masked value becomes the string `"****"`; `null` stays `null`.
use serde_json::Value;

/// The replacement for a masked value.
pub const MASKED: &str = "****";

/// What masking did to one body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MaskReport {
    /// The mask entries that matched at least once, in config order.
    pub fields: Vec<String>,
    /// How many values were replaced.
    pub count: u64,
}

/// Masks `body` (a JSON document) under `masks`; returns the re-serialised
/// body and what was masked.
///
/// # Errors
/// The parser's error when `body` is not JSON.
pub fn mask_json(
    body: &[u8],
    masks: &[String],
) -> Result<(Vec<u8>, MaskReport), serde_json::Error> {
    let mut doc: Value = serde_json::from_slice(body)?;
    let patterns: Vec<Vec<&str>> = masks.iter().map(|m| m.split('.').collect()).collect();
    let mut hits = vec![0u64; masks.len()];
    let mut path = Vec::new();
    walk(&mut doc, &patterns, &mut path, &mut hits);
    let report = MaskReport {
        fields: masks
            .iter()
            .zip(&hits)
            .filter(|(_, n)| **n > 0)
            .map(|(m, _)| m.clone())
            .collect(),
        count: hits.iter().sum(),
    };
    Ok((serde_json::to_vec(&doc)?, report))
}

fn walk(value: &mut Value, patterns: &[Vec<&str>], path: &mut Vec<String>, hits: &mut [u64]) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                path.push(key.clone());
                match patterns.iter().position(|p| ends_with(path, p)) {
                    Some(i) if !child.is_null() => {
                        *child = Value::String(MASKED.into());
                        hits[i] += 1;
                    }
                    Some(_) => {}
                    None => walk(child, patterns, path, hits),
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, patterns, path, hits);
            }
        }
        _ => {}
    }
}

fn ends_with(path: &[String], pattern: &[&str]) -> bool {
    pattern.len() <= path.len()
        && path[path.len() - pattern.len()..]
            .iter()
            .zip(pattern)
            .all(|(a, b)| a == b)
}

/// True for `application/json` and `application/*+json` (RFC 6839 §3.1).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masks(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_anywhere_and_dotted_paths() {
        let body = br#"{"customer":{"ssn":"123-45-6789","card":{"number":"4111111111111111","exp":"12/30"},"name":"Ann"}}"#;
        let (out, report) = mask_json(body, &masks(&["card.number", "ssn"])).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["customer"]["ssn"], MASKED);
        assert_eq!(v["customer"]["card"]["number"], MASKED);
        assert_eq!(v["customer"]["card"]["exp"], "12/30");
        assert_eq!(v["customer"]["name"], "Ann");
        assert_eq!(
            report,
            MaskReport {
                fields: masks(&["card.number", "ssn"]),
                count: 2
            }
        );
        assert!(!String::from_utf8(out).unwrap().contains("4111"));
    }

    #[test]
    fn arrays_of_objects_and_nulls() {
        let body = br#"[{"ssn":"1"},{"ssn":null},{"other":{"ssn":["x","y"]}}]"#;
        let (out, report) = mask_json(body, &masks(&["ssn"])).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"[{"ssn":"****"},{"ssn":null},{"other":{"ssn":"****"}}]"#
        );
        assert_eq!(report.count, 2);
    }

    #[test]
    fn dotted_path_does_not_match_a_bare_key() {
        let (out, report) = mask_json(
            br#"{"number":"1","card":{"number":"2"}}"#,
            &masks(&["card.number"]),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"number":"1","card":{"number":"****"}}"#
        );
        assert_eq!(report.count, 1);
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(mask_json(b"<html>", &masks(&["ssn"])).is_err());
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/plain"));
    }
}
