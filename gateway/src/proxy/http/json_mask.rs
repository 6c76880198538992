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
//! a UTF-8 byte order mark, in UTF-8 or, as RFC 4627 §3 allowed, UTF-16 or
//! UTF-32 ([`super::wide_text`]).
use super::wide_text::Wide;
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

/// Masks `body` whatever its media type: one JSON text, or every line that
/// is a JSON text (NDJSON, JSON text sequences with their `RS` prefix,
/// JSON after an XSSI prefix line), keeping other lines as they are.
/// `Ok(None)` when no line is JSON and nothing in the text looks like a
/// masked key (the caller passes it on, or refuses it when it was
/// declared JSON).
///
/// # Errors
/// A message for a 502 when a masked key appears where masking cannot
/// reach it: in a line that is not JSON (`cb({"ssn": …})`, `data: {…}`),
/// or in JSON encoded inside a string value.
///
/// A body in UTF-16 or UTF-32 ([`Wide::detect`]) is masked as the text it
/// decodes to and sent on in its own encoding. Any other body holding NUL
/// bytes is also read in each wide encoding, leniently, and refused when a
/// masked key shows up in one of them.
pub fn mask_document(
    body: &[u8],
    masks: &[String],
) -> Result<Option<(Vec<u8>, MaskReport)>, String> {
    if let Some((wide, bom)) = Wide::detect(body) {
        if let Some(text) = wide.decode(&body[bom..]) {
            return Ok(mask_utf8(text.as_bytes(), masks)?.map(|(out, report)| {
                let utf8 = String::from_utf8_lossy(&out);
                ([&body[..bom], &wide.encode(&utf8)[..]].concat(), report)
            }));
        }
    }
    if body.contains(&0) {
        for wide in Wide::ALL {
            let text = wide.decode_lossy(body);
            match mask_utf8(text.as_bytes(), masks)? {
                Some((_, report)) if report.count > 0 => {
                    return Err(hidden(&report.fields.join(", ")));
                }
                _ => {}
            }
        }
    }
    mask_utf8(body, masks)
}

/// [`mask_document`] for a body read as UTF-8.
fn mask_utf8(body: &[u8], masks: &[String]) -> Result<Option<(Vec<u8>, MaskReport)>, String> {
    let text = strip_bom(body);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let patterns = patterns(masks);
    let mut hits = vec![0u64; masks.len()];
    if let Ok(mut doc) = serde_json::from_slice::<Value>(text) {
        walk(&mut doc, &patterns, &mut Vec::new(), &mut hits);
        refuse_hidden_keys(&doc, &patterns)?;
        let out = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
        return Ok(Some((out, report(masks, &hits))));
    }
    let mut out = Vec::with_capacity(text.len());
    let mut any_json = false;
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let (rs, rest) = match line.strip_prefix(b"\x1e") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (json, cr) = match rest.strip_suffix(b"\r") {
            Some(json) => (json, true),
            None => (rest, false),
        };
        match serde_json::from_slice::<Value>(json) {
            Ok(mut doc) if !json.iter().all(u8::is_ascii_whitespace) => {
                walk(&mut doc, &patterns, &mut Vec::new(), &mut hits);
                refuse_hidden_keys(&doc, &patterns)?;
                if rs {
                    out.push(0x1e);
                }
                serde_json::to_writer(&mut out, &doc).map_err(|e| e.to_string())?;
                if cr {
                    out.push(b'\r');
                }
                any_json = true;
            }
            _ => {
                if let Some(key) = embedded_key(line, &patterns, 0) {
                    return Err(hidden(&key));
                }
                out.extend_from_slice(line);
            }
        }
    }
    Ok(any_json.then(|| (out, report(masks, &hits))))
}

fn hidden(key: &str) -> String {
    format!("the response holds the masked key {key:?} where masking cannot reach it (not JSON, or JSON inside a string); refused")
}

/// Refuses a parsed document whose string values carry JSON with a masked
/// key (JSON encoded inside JSON).
fn refuse_hidden_keys(doc: &Value, patterns: &[Vec<String>]) -> Result<(), String> {
    match doc {
        Value::String(s) => match embedded_key(s.as_bytes(), patterns, 1) {
            Some(key) => Err(hidden(&key)),
            None => Ok(()),
        },
        Value::Array(items) => items
            .iter()
            .try_for_each(|v| refuse_hidden_keys(v, patterns)),
        Value::Object(map) => map
            .values()
            .try_for_each(|v| refuse_hidden_keys(v, patterns)),
        _ => Ok(()),
    }
}

/// A JSON object key in `text` (a string literal, JSON escapes decoded,
/// followed by `:`) that names a masked field, searched through the text
/// and, up to two levels, inside string literals that hold JSON. This is a
/// fail-closed check for text that is not itself JSON.
fn embedded_key(text: &[u8], patterns: &[Vec<String>], depth: u8) -> Option<String> {
    let mut i = 0;
    while let Some(off) = text[i..].iter().position(|b| *b == b'"') {
        let start = i + off;
        let mut strings =
            serde_json::Deserializer::from_slice(&text[start..]).into_iter::<String>();
        let Some(Ok(literal)) = strings.next() else {
            i = start + 1;
            continue;
        };
        let end = start + strings.byte_offset();
        let is_key = text[end..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b':');
        let folded = fold(&literal);
        let masked = patterns
            .iter()
            .any(|p| p.last().is_some_and(|l| *l == folded) || p.join(".") == folded);
        if is_key && masked {
            return Some(literal);
        }
        if depth < 2 && literal.contains('"') {
            if let Some(key) = embedded_key(literal.as_bytes(), patterns, depth + 1) {
                return Some(key);
            }
        }
        i = end.max(start + 1);
    }
    None
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
                let whole = path.last().cloned().unwrap_or_default();
                match patterns
                    .iter()
                    .position(|p| ends_with(path, p) || (p.len() > 1 && p.join(".") == whole))
                {
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
            "{\"ssn\":\"****\"}\r\n\n[{\"ssn\":\"****\"}]\n"
        );
        assert_eq!(report.count, 2);
        let m = masks(&["ssn", "card.number"]);
        assert!(mask_document(b"<html>ssn 1</html>", &m).unwrap().is_none());
        assert!(mask_document(b"  ", &m).unwrap().is_none());
        // Lines that are JSON are masked, others kept: NDJSON with a bad
        // line, JSON text sequences, an XSSI prefix.
        let (out, _) = mask_document(b"{\"ssn\":1}\nnot json", &m)
            .unwrap()
            .unwrap();
        assert_eq!(out, b"{\"ssn\":\"****\"}\nnot json");
        let (out, _) = mask_document(b"\x1e{\"ssn\":1}\n\x1e[2]\n", &m)
            .unwrap()
            .unwrap();
        assert_eq!(out, b"\x1e{\"ssn\":\"****\"}\n\x1e[2]\n");
        let (out, _) = mask_document(b")]}'\n{\"SSN\":1}", &m).unwrap().unwrap();
        assert_eq!(out, b")]}'\n{\"SSN\":\"****\"}");
        // A masked key where masking cannot reach it is refused.
        for body in [
            &b"cb({\"ssn\": \"1\"})"[..],
            b"data: {\"ssn\":\"1\"}",
            b"{\"ssn\":\"1\"} trailing",
            br#"{"doc": "{\"ssn\": \"1\"}"}"#,
            br#"x {"\u0073sn" : 1}"#,
            br#"x {"number": "4111"}"#,
        ] {
            assert!(
                mask_document(body, &m).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A flat key spelled like a dotted mask entry is masked.
        let (out, _) = mask_document(br#"{"card.number":"4111"}"#, &m)
            .unwrap()
            .unwrap();
        assert_eq!(out, br#"{"card.number":"****"}"#);
    }

    #[test]
    fn utf16_and_utf32_are_masked_in_their_own_encoding_whatever_they_are_labelled() {
        let m = masks(&["ssn"]);
        let doc = "{\"ssn\":\"123-45-6789\"}\n";
        for wide in Wide::ALL {
            for bom in [&b""[..], wide.bom()] {
                let body = [bom, &wide.encode(doc)[..]].concat();
                let (out, report) = mask_document(&body, &m).unwrap().unwrap();
                assert_eq!(report.count, 1, "{wide:?}");
                assert_eq!(out, [bom, &wide.encode("{\"ssn\":\"****\"}")[..]].concat());
            }
        }
        // Wide text after a byte that breaks the RFC 4627 pattern, or not
        // JSON at all, is refused when a masked key shows up in it.
        let odd = [&b"\x01"[..], &Wide::Utf16Be.encode(doc)[..]].concat();
        assert!(mask_document(&odd, &m).is_err());
        let callback = Wide::Utf16Le.encode("cb({\"ssn\": 1})");
        assert!(mask_document(&callback, &m).is_err());
        // Binary with NULs and no masked key passes.
        assert!(mask_document(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", &m)
            .unwrap()
            .is_none());
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
