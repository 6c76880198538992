//! Masking JSON fields in HTTP responses (DESIGN.md §4 `mask`, RFC 8259).
//!
//! A mask entry is a key name (`ssn`), which matches that key at any depth,
//! or a dotted path (`card.number`), which matches where the object keys
//! leading to a value end with those components (`customer.card.number`
//! included). Keys compare case-insensitively and without surrounding
//! white space (`" SSN "` matches `ssn`), since clients and backends often
//! read keys that way. Arrays are transparent, so arrays of objects are
//! covered. A masked value becomes the string `"****"`; `null` stays `null`.
//!
//! What counts as JSON is decided by parsing, not by `Content-Type`:
//! [`mask_document`] masks any body that parses as one JSON text or as
//! newline-delimited JSON (NDJSON, one JSON text per line), with or without
//! a UTF-8 byte order mark.
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
    let mut doc: Value = serde_json::from_slice(strip_bom(body))?;
    let patterns = patterns(masks);
    let mut hits = vec![0u64; masks.len()];
    walk(&mut doc, &patterns, &mut Vec::new(), &mut hits);
    Ok((serde_json::to_vec(&doc)?, report(masks, &hits)))
}

/// Masks `body` if it is JSON or NDJSON, whatever its media type; `None`
/// when it is neither (the caller passes it on, or refuses it when it was
/// declared JSON). NDJSON keeps its line structure; blank lines are kept.
///
/// # Errors
/// Only when re-serialising fails (never for parsed input).
pub fn mask_document(
    body: &[u8],
    masks: &[String],
) -> Result<Option<(Vec<u8>, MaskReport)>, serde_json::Error> {
    let text = strip_bom(body);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
        return mask_json(text, masks).map(Some);
    }
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    let mut docs = Vec::with_capacity(lines.len());
    for line in &lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            docs.push(None);
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => docs.push(Some(v)),
            Err(_) => return Ok(None),
        }
    }
    let patterns = patterns(masks);
    let mut hits = vec![0u64; masks.len()];
    let mut out = Vec::with_capacity(text.len());
    for (i, doc) in docs.iter_mut().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        if let Some(doc) = doc {
            walk(doc, &patterns, &mut Vec::new(), &mut hits);
            serde_json::to_writer(&mut out, doc)?;
        }
    }
    Ok(Some((out, report(masks, &hits))))
}

/// `body` without a leading UTF-8 byte order mark.
fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// Each mask entry's path components, compared folded ([`fold`]).
fn patterns(masks: &[String]) -> Vec<Vec<String>> {
    masks
        .iter()
        .map(|m| m.split('.').map(fold).collect())
        .collect()
}

/// A key as masks compare it: trimmed and lower case.
fn fold(key: &str) -> String {
    key.trim().to_lowercase()
}

fn report(masks: &[String], hits: &[u64]) -> MaskReport {
    MaskReport {
        fields: masks
            .iter()
            .zip(hits)
            .filter(|(_, n)| **n > 0)
            .map(|(m, _)| m.clone())
            .collect(),
        count: hits.iter().sum(),
    }
}

fn walk(value: &mut Value, patterns: &[Vec<String>], path: &mut Vec<String>, hits: &mut [u64]) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                path.push(fold(key));
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

fn ends_with(path: &[String], pattern: &[String]) -> bool {
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

/// True for `text/event-stream` (server-sent events), which never ends
/// and so cannot be buffered to be masked.
pub fn is_event_stream(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("text/event-stream")
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
    fn keys_match_whatever_their_case_and_surrounding_space() {
        let body = br#"{"SSN":"1","Card":{" Number ":"4111"},"ssn ":"2"}"#;
        let (out, report) = mask_json(body, &masks(&["ssn", "card.number"])).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("4111") && !out.contains("\"1\"") && !out.contains("\"2\""),
            "{out}"
        );
        assert_eq!(report.count, 3);
    }

    #[test]
    fn json_and_ndjson_are_masked_whatever_they_are_labelled() {
        let (out, _) = mask_document(b"\xEF\xBB\xBF{\"ssn\":\"1\"}", &masks(&["ssn"]))
            .unwrap()
            .unwrap();
        assert_eq!(out, br#"{"ssn":"****"}"#);
        let nd = b"{\"ssn\":\"1\"}\r\n\n[{\"ssn\":\"2\"}]\n";
        let (out, report) = mask_document(nd, &masks(&["ssn"])).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"ssn\":\"****\"}\n\n[{\"ssn\":\"****\"}]\n"
        );
        assert_eq!(report.count, 2);
        assert!(mask_document(b"<html>ssn 1</html>", &masks(&["ssn"]))
            .unwrap()
            .is_none());
        assert!(mask_document(b"{\"ssn\":1}\nnot json", &masks(&["ssn"]))
            .unwrap()
            .is_none());
        assert!(mask_document(b"  ", &masks(&["ssn"])).unwrap().is_none());
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
