//! From an HTTP request to the [`HttpOperation`] policy decides on, read
//! the way the backends behind Sluice may read it.
//!
//! A deny rule is only as good as the agreement between what policy sees and
//! what the upstream acts on. Backends disagree on paths: some decode `%2F`
//! before routing and some do not, some treat `\` as `/`, strip `;`
//! path parameters (RFC 3986 §3.3), resolve dot segments, collapse `//`,
//! decode twice, or route case-insensitively. And frameworks let a `POST`
//! act as another method through an override (`X-HTTP-Method-Override` and
//! its relatives, a `_method` query parameter or form field).
//!
//! So on a service with `deny` or `approve` rules, Sluice decides on exactly
//! what it forwards (the request, unchanged) and:
//! - refuses with `400` a path whose reading is ambiguous ([`Ambiguity`]):
//!   a backslash, a `;`, a dot segment, an empty segment, a `%25`
//!   double encoding, a control character or invalid percent-encoding or
//!   UTF-8, raw or percent-encoded;
//! - matches rules against every reading that is left: the percent-decoded
//!   path, and, when it holds an encoded slash, also the path with `%2F`
//!   kept as a character of its segment; rules compare case-insensitively
//!   ([`crate::policy::http::decide`]);
//! - treats every method an override names as a method of the request: a
//!   rule on `DELETE` matches a `POST` carrying `X-HTTP-Method-Override:
//!   DELETE`.
//!
//! Services without rules forward every path and record its decoded form.
use hyper::{header::HeaderMap, http::request::Parts};

/// Headers frameworks read as the real method of a `POST`.
pub const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The query parameter and form field frameworks (Rails, Laravel, Symfony)
/// read as the real method.
pub const OVERRIDE_PARAM: &str = "_method";

/// Why a path was refused as ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguity {
    #[error("a backslash (raw or %5C), which some backends read as '/'")]
    Backslash,
    #[error("a ';' path parameter (raw or %3B), which some backends strip")]
    PathParameter,
    #[error("a '.' or '..' segment (raw or percent-encoded), which backends resolve differently")]
    DotSegment,
    #[error("an empty segment ('//'), which some backends collapse")]
    EmptySegment,
    #[error(
        "a double percent-encoding (%25 followed by hex digits), which some backends decode twice"
    )]
    DoubleEncoding,
    #[error("a control character (raw or percent-encoded)")]
    ControlCharacter,
    #[error("invalid percent-encoding or UTF-8")]
    BadEncoding,
}

/// The readings of a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathReadings {
    /// The percent-decoded path, for records.
    pub display: String,
    /// Every reading rules are matched against (`display` first).
    pub readings: Vec<String>,
}

/// Reads `raw` (the path of the request target, without the query) for
/// policy. With `strict` (the service has rules), an ambiguous path is an
/// error; without, it is only decoded and normalised for the record
/// ([`lenient`]).
///
/// # Errors
/// [`Ambiguity`] (only with `strict`).
pub fn read_path(raw: &str, strict: bool) -> Result<PathReadings, Ambiguity> {
    if !strict {
        let display = lenient(raw);
        return Ok(PathReadings {
            readings: vec![display.clone()],
            display,
        });
    }
    let raw_segments: Vec<&str> = raw.split('/').collect();
    let last = raw_segments.len() - 1;
    let mut decoded = Vec::with_capacity(raw_segments.len());
    let mut literal = Vec::with_capacity(raw_segments.len());
    let mut encoded_slash = false;
    for (i, seg) in raw_segments.iter().enumerate() {
        let (text, kept, slash) = decode_segment(seg)?;
        encoded_slash |= slash;
        if text == "." || text == ".." {
            return Err(Ambiguity::DotSegment);
        }
        // "/a/" ends with an empty segment and "/" is one; "//" inside is not.
        if text.is_empty() && i != 0 && i != last {
            return Err(Ambiguity::EmptySegment);
        }
        decoded.push(text);
        literal.push(kept);
    }
    let display = if raw.is_empty() {
        "/".to_string()
    } else {
        decoded.join("/")
    };
    let mut readings = vec![display.clone()];
    if encoded_slash {
        readings.push(literal.join("/"));
    }
    // Backends that fold look-alike letters (NFKC: `ſ` → `s`, fullwidth
    // letters → ASCII) or trim a segment's trailing dots and spaces (IIS,
    // .NET, older Spring) route these to the same handler.
    for reading in readings.clone() {
        for variant in [folded(&reading), trimmed_segments(&reading)] {
            if !readings.contains(&variant) {
                readings.push(variant);
            }
        }
    }
    Ok(PathReadings { display, readings })
}

/// `path` in Unicode compatibility normal form (NFKC, UAX #15), which maps
/// look-alikes such as `ſ` and fullwidth letters to ASCII.
fn folded(path: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    path.nfkc().collect()
}

/// `path` with each segment's trailing dots and spaces removed.
fn trimmed_segments(path: &str) -> String {
    path.split('/')
        .map(|s| s.trim_end_matches(['.', ' ']))
        .collect::<Vec<_>>()
        .join("/")
}

/// Decodes one raw segment: (decoded text, decoded text with `%2F` kept as
/// `%2F`, whether it held an encoded slash).
fn decode_segment(seg: &str) -> Result<(String, String, bool), Ambiguity> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut kept = Vec::with_capacity(bytes.len());
    let mut slash = false;
    let mut i = 0;
    while i < bytes.len() {
        let (b, encoded) = if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(Ambiguity::BadEncoding)?;
            let b = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(Ambiguity::BadEncoding)?;
            i += 3;
            (b, true)
        } else {
            i += 1;
            (bytes[i - 1], false)
        };
        match b {
            b'\\' => return Err(Ambiguity::Backslash),
            b';' => return Err(Ambiguity::PathParameter),
            0..=0x1f | 0x7f => return Err(Ambiguity::ControlCharacter),
            b'%' if encoded
                && bytes
                    .get(i..i + 2)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                return Err(Ambiguity::DoubleEncoding)
            }
            b'/' if encoded => {
                slash = true;
                out.push(b'/');
                kept.extend_from_slice(b"%2F");
            }
            _ => {
                out.push(b);
                kept.push(b);
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| Ambiguity::BadEncoding)?;
    let kept = String::from_utf8(kept).map_err(|_| Ambiguity::BadEncoding)?;
    Ok((text, kept, slash))
}

/// The path as records show it on services without rules: percent-decoded,
/// with `.`/`..` segments resolved and empty segments dropped (RFC 3986
/// §5.2.4).
pub fn lenient(raw: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (decoded.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    out
}

/// The request's method followed by every method an override header or a
/// `_method` query parameter names (upper-cased, each once). A form
/// body's `_method` is added by the caller ([`form_methods`]).
pub fn methods(parts: &Parts) -> Vec<String> {
    let mut out = vec![parts.method.as_str().to_ascii_uppercase()];
    for name in OVERRIDE_HEADERS {
        for value in parts.headers.get_all(name) {
            for m in String::from_utf8_lossy(value.as_bytes()).split(',') {
                add_method(&mut out, m);
            }
        }
    }
    if let Some(query) = parts.uri.query() {
        // Some frameworks also split parameters on `;` (HTML 4 §B.2.2).
        let query = query.replace(';', "&");
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key.eq_ignore_ascii_case(OVERRIDE_PARAM) {
                add_method(&mut out, &value);
            }
        }
    }
    out
}

fn add_method(out: &mut Vec<String>, method: &str) {
    let m = method.trim().to_ascii_uppercase();
    if !m.is_empty() && !out.contains(&m) {
        out.push(m);
    }
}

/// What kind of form body a request carries, by `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormBody {
    /// `application/x-www-form-urlencoded`.
    UrlEncoded,
    /// `multipart/form-data` with this boundary.
    Multipart(String),
    /// A JSON body, whose top-level `_method` member Laravel honours.
    Json,
}

/// The form kind of a request body, if it is one a framework reads a
/// `_method` field from.
pub fn form_body(headers: &HeaderMap) -> Option<FormBody> {
    let Some(original) = headers.get(hyper::header::CONTENT_TYPE) else {
        // Rack and others read an unlabelled body as a form.
        return Some(FormBody::UrlEncoded);
    };
    let original = original.to_str().ok()?;
    let ct = original.to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    match essence {
        "application/x-www-form-urlencoded" => Some(FormBody::UrlEncoded),
        "multipart/form-data" => multer::parse_boundary(original)
            .ok()
            .map(FormBody::Multipart),
        e if e == "application/json" || e.ends_with("+json") => Some(FormBody::Json),
        _ => None,
    }
}

/// Adds the methods named by `_method` fields of a buffered form `body`.
///
/// # Errors
/// A message for a `400` when the multipart body cannot be parsed (a form
/// Sluice cannot read could carry an override it does not see).
pub async fn form_methods(
    kind: &FormBody,
    body: bytes::Bytes,
    out: &mut Vec<String>,
) -> Result<(), String> {
    match kind {
        FormBody::Json => {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&body) {
                for (key, value) in map {
                    if let (true, Some(m)) =
                        (key.eq_ignore_ascii_case(OVERRIDE_PARAM), value.as_str())
                    {
                        add_method(out, m);
                    }
                }
            }
            Ok(())
        }
        FormBody::UrlEncoded => {
            for (key, value) in form_urlencoded::parse(&body) {
                if key.eq_ignore_ascii_case(OVERRIDE_PARAM) {
                    add_method(out, &value);
                }
            }
            Ok(())
        }
        FormBody::Multipart(boundary) => {
            let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
            let mut form = multer::Multipart::new(stream, boundary.clone());
            let unreadable = |e: multer::Error| format!("multipart form body cannot be read: {e}");
            while let Some(field) = form.next_field().await.map_err(unreadable)? {
                // multer reads only a lower-case, quoted `name`; a server
                // may read `NAME=` or an unquoted value too, so every
                // reading of the part's Content-Disposition counts.
                let is_override = field
                    .headers()
                    .get_all(hyper::header::CONTENT_DISPOSITION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(disposition_names)
                    .chain(field.name().map(String::from))
                    .any(|n| n.eq_ignore_ascii_case(OVERRIDE_PARAM));
                if is_override {
                    add_method(out, &field.text().await.map_err(unreadable)?);
                }
            }
            Ok(())
        }
    }
}

/// The `name` parameters of a Content-Disposition value (RFC 7578 §4.2,
/// RFC 2183 §2): parameter names case-insensitive, values quoted (with
/// `\` escapes) or bare tokens; `name*` (RFC 8187) percent-decoded after
/// its `charset''` prefix.
fn disposition_names(value: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some((_, after)) = rest.split_once(';') {
        let Some((key, tail)) = after.split_once('=') else {
            break;
        };
        let key = key.trim();
        let tail = tail.trim_start();
        let (param, next) = match tail.strip_prefix('"') {
            Some(quoted) => {
                let mut out = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => out.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => out.push(c),
                    }
                }
                (out, &quoted[end..])
            }
            None => {
                let end = tail.find(';').unwrap_or(tail.len());
                (tail[..end].trim().to_string(), &tail[end..])
            }
        };
        if key.eq_ignore_ascii_case("name") {
            names.push(param);
        } else if key.eq_ignore_ascii_case("name*") {
            let encoded = param.splitn(3, '\'').nth(2).unwrap_or(&param);
            names.push(
                percent_encoding::percent_decode_str(encoded)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
        rest = next;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(raw: &str) -> Result<Vec<String>, Ambiguity> {
        read_path(raw, true).map(|r| r.readings)
    }

    #[test]
    fn plain_and_encoded_paths_read_decoded() {
        assert_eq!(strict("/v1/customers/42").unwrap(), ["/v1/customers/42"]);
        assert_eq!(strict("/v1/%63ustomers/42").unwrap(), ["/v1/customers/42"]);
        assert_eq!(strict("/").unwrap(), ["/"]);
        assert_eq!(strict("/a/").unwrap(), ["/a/"]);
        assert_eq!(strict("/a%20b").unwrap(), ["/a b"]);
    }

    #[test]
    fn an_encoded_slash_is_read_both_ways() {
        assert_eq!(
            strict("/v1/customers%2F42").unwrap(),
            ["/v1/customers/42", "/v1/customers%2F42"]
        );
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        use Ambiguity::*;
        for (raw, why) in [
            ("/v1\\customers/42", Backslash),
            ("/v1%5Ccustomers/42", Backslash),
            ("/v1/customers;x=1/42", PathParameter),
            ("/v1/customers%3B/42", PathParameter),
            ("/v1/x/../customers/42", DotSegment),
            ("/v1/%2e%2E/customers/42", DotSegment),
            ("/v1/./customers/42", DotSegment),
            ("/v1//customers/42", EmptySegment),
            ("/v1/%2563ustomers/42", DoubleEncoding),
            ("/v1/customers/42%00", ControlCharacter),
            ("/v1/customers/%zz", BadEncoding),
            ("/v1/customers/%ff", BadEncoding),
            ("/v1/customers/%4", BadEncoding),
        ] {
            assert_eq!(strict(raw), Err(why), "{raw}");
        }
        // A literal percent sign not followed by hex digits is not double encoding.
        assert_eq!(strict("/100%25").unwrap(), ["/100%"]);
    }

    #[test]
    fn without_rules_paths_are_only_normalised() {
        let r = read_path("/v1/x/../%63ustomers//./42", false).unwrap();
        assert_eq!(r.display, "/v1/customers/42");
        assert_eq!(lenient("/../.."), "/");
        assert_eq!(lenient("/a/"), "/a/");
    }

    #[test]
    fn override_headers_and_parameters_add_methods() {
        let req = hyper::Request::post("/v1/customers/1?_method=delete&x=1")
            .header("X-HTTP-Method-Override", "PUT, patch")
            .header("x-method-override", "DELETE")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        assert_eq!(methods(&parts), ["POST", "PUT", "PATCH", "DELETE"]);
    }

    #[tokio::test]
    async fn form_bodies_name_methods_too() {
        let mut m = vec!["POST".to_string()];
        form_methods(&FormBody::UrlEncoded, "a=1&_method=DELETE".into(), &mut m)
            .await
            .unwrap();
        assert_eq!(m, ["POST", "DELETE"]);
        let body =
            "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\npatch\r\n--XyZ--\r\n";
        let mut m = vec!["POST".to_string()];
        form_methods(&FormBody::Multipart("XyZ".into()), body.into(), &mut m)
            .await
            .unwrap();
        assert_eq!(m, ["POST", "PATCH"]);
        let headers: HeaderMap = [(
            hyper::header::CONTENT_TYPE,
            "multipart/form-data; boundary=XyZ".parse().unwrap(),
        )]
        .into_iter()
        .collect();
        assert_eq!(form_body(&headers), Some(FormBody::Multipart("XyZ".into())));
    }

    #[test]
    fn disposition_names_are_read_as_a_server_would() {
        assert_eq!(
            disposition_names(r#"form-data; name="_method""#),
            ["_method"]
        );
        assert_eq!(
            disposition_names(r#"form-data; NAME="_method""#),
            ["_method"]
        );
        assert_eq!(disposition_names("form-data; name=_method"), ["_method"]);
        assert_eq!(
            disposition_names(r#"form-data; filename="a;b=c"; Name = "x\"y""#),
            ["x\"y"]
        );
        assert_eq!(
            disposition_names("form-data; name*=UTF-8''_m%65thod"),
            ["_method"]
        );
        assert!(disposition_names("form-data").is_empty());
    }
}
