//! An independent review of JSON masking (README "Masking JSON
//! responses"). A passing test means Sluice held; an ignored one is a
//! bypass that fails today.
use crate::attack_http_review::{curl, stack, CARD, MASK, SERVICE, SSN};

/// An upstream answer: what, `Content-Type`, body.
type Answer = (&'static str, Option<&'static str>, String);

/// Serves each answer from the upstream of a service with [`MASK`] and
/// fetches it over HTTP/1.1 and HTTP/2; returns the fetches in which the
/// SSN or card number came back (NULs removed, for UTF-16), with status.
fn leaks(label: &str, answers: &[Answer]) -> Vec<String> {
    let (stack, auth) = stack(label, MASK);
    let up = stack.upstream(SERVICE);
    let mut leaks = Vec::new();
    for (what, content_type, body) in answers {
        up.respond_with_type(200, *content_type, body);
        for version in ["--http1.1", "--http2"] {
            let res = curl(
                &stack,
                &auth,
                &[version, "--request-target", "/v1/customers/1"],
            );
            assert_eq!(res.exit, 0, "{what} {version}: {}", res.stderr);
            let body = res.body.replace('\0', "");
            if body.contains(SSN) || body.contains(CARD) || body.contains("123456789") {
                leaks.push(format!("{what} {version}: {} {body:?}", res.status));
            }
        }
    }
    leaks
}

#[track_caller]
fn assert_no_leaks(label: &str, answers: &[Answer]) {
    let leaks = leaks(label, answers);
    assert!(leaks.is_empty(), "unmasked: {leaks:#?}");
}

fn ssn_doc() -> String {
    format!(r#"{{"ssn":"{SSN}"}}"#)
}

#[test]
fn masking_holds_under_key_escapes_duplicates_arrays_types_and_http2() {
    let utf16: String = ssn_doc().chars().flat_map(|c| [c, '\0']).collect();
    let nested = |depth| format!("{}{}{}", "[".repeat(depth), ssn_doc(), "]".repeat(depth));
    let json = Some("application/json");
    assert_no_leaks(
        "review-mask-held",
        &[
            (
                "unicode escape in key",
                json,
                format!(r#"{{"\u0073sn":"{SSN}"}}"#),
            ),
            (
                "duplicate keys",
                json,
                format!(r#"{{"ssn":"x","ssn":"{SSN}"}}"#),
            ),
            (
                "escaped nested keys",
                json,
                format!(r#"{{"c\u0061rd":{{"numb\u0065r":"{CARD}"}}}}"#),
            ),
            (
                "card in an array",
                json,
                format!(r#"{{"card":[{{"number":"{CARD}"}}]}}"#),
            ),
            ("top-level array", json, format!("[{}]", ssn_doc())),
            (
                "NBSP after key",
                json,
                format!("{{\"ssn\u{a0}\":\"{SSN}\"}}"),
            ),
            ("number value", json, r#"{"ssn":123456789}"#.to_string()),
            (
                "NDJSON with CRLF",
                Some("text/plain"),
                format!("{0}\r\n{0}\r\n", ssn_doc()),
            ),
            (
                "NDJSON with a blank line",
                Some("text/plain"),
                format!("{0}\n\n{0}\n", ssn_doc()),
            ),
            (
                "XSSI prefix declared JSON",
                json,
                format!(")]}}'\n{}", ssn_doc()),
            ),
            ("UTF-16 declared JSON", json, utf16),
            (
                "event stream in capitals",
                Some("TEXT/EVENT-STREAM"),
                format!("data: {}\n\n", ssn_doc()),
            ),
            (
                "event stream with charset",
                Some("text/event-stream; charset=utf-8"),
                format!("data: {}\n\n", ssn_doc()),
            ),
            (
                "broken +json",
                Some("application/vnd.api+json; charset=utf-8"),
                format!("{{\"ssn\":\"{SSN}\""),
            ),
            ("200 levels deep", json, nested(200)),
            ("5000 levels deep", json, nested(5000)),
        ],
    );
}

#[test]
fn masking_holds_on_error_redirect_partial_and_empty_statuses() {
    let (stack, auth) = stack("review-mask-statuses", MASK);
    let up = stack.upstream(SERVICE);
    for status in [204u16, 206, 302, 304, 404, 500] {
        up.respond_with_type(status, Some("application/json"), &ssn_doc());
        let res = curl(&stack, &auth, &["--request-target", "/v1/customers/1"]);
        assert_eq!((res.exit, res.status), (0, status), "{}", res.body);
        assert!(!res.body.contains(SSN), "{status}: {}", res.body);
    }
}

#[test]
fn ndjson_with_a_line_that_is_not_json_is_not_passed_unmasked() {
    let body = format!("{}\nnot json\n", ssn_doc());
    assert_no_leaks(
        "review-mask-ndjson",
        &[
            (
                "application/x-ndjson",
                Some("application/x-ndjson"),
                body.clone(),
            ),
            ("text/plain", Some("text/plain"), body),
        ],
    );
}

#[test]
fn json_text_sequences_are_not_passed_unmasked() {
    assert_no_leaks(
        "review-mask-json-seq",
        &[(
            "json-seq",
            Some("application/json-seq"),
            format!("\u{1e}{}\n", ssn_doc()),
        )],
    );
}

#[test]
fn json_wrapped_in_text_is_not_passed_unmasked() {
    assert_no_leaks(
        "review-mask-wrapped",
        &[
            (
                "JSONP",
                Some("application/javascript"),
                format!("cb({})", ssn_doc()),
            ),
            (
                "XSSI prefix as text",
                Some("text/plain"),
                format!(")]}}'\n{}", ssn_doc()),
            ),
            (
                "trailing text",
                Some("text/plain"),
                format!("{}garbage", ssn_doc()),
            ),
            (
                "SSE as text/plain",
                Some("text/plain"),
                format!("data: {}\n\n", ssn_doc()),
            ),
        ],
    );
}

#[test]
fn a_multipart_response_with_a_json_part_is_not_passed_unmasked() {
    let body = format!(
        "--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b--\r\n",
        ssn_doc()
    );
    assert_no_leaks(
        "review-mask-multipart",
        &[("multipart/mixed", Some("multipart/mixed; boundary=b"), body)],
    );
}

#[test]
fn utf16_json_labelled_as_text_is_not_passed_unmasked() {
    let utf16: String = ssn_doc().chars().flat_map(|c| [c, '\0']).collect();
    assert_no_leaks(
        "review-mask-utf16",
        &[("UTF-16LE as text/plain", Some("text/plain"), utf16)],
    );
}

#[test]
fn json_inside_a_string_is_masked() {
    assert_no_leaks(
        "review-mask-string",
        &[(
            "JSON in a string",
            Some("application/json"),
            format!(r#"{{"payload":"{{\"ssn\":\"{SSN}\"}}"}}"#),
        )],
    );
}

#[test]
fn a_literal_dotted_key_is_masked() {
    assert_no_leaks(
        "review-mask-dotted",
        &[(
            "flat dotted key",
            Some("application/json"),
            format!(r#"{{"card.number":"{CARD}"}}"#),
        )],
    );
}

/// Sends a gRPC-style POST with `content-type: <content_type>` over
/// `version` to a masked service whose upstream answers a protobuf-framed
/// message holding the SSN; returns the calls that reached the upstream or
/// got the SSN back.
fn grpc_like(content_types: &[(&str, &str)]) -> Vec<String> {
    let (stack, auth) = stack("review-mask-grpc", MASK);
    let up = stack.upstream(SERVICE);
    up.respond_with_type(200, Some("application/grpc"), &format!("\0\0\0\0\x0d{SSN}"));
    let mut passed = Vec::new();
    for (version, content_type) in content_types {
        let header = format!("content-type: {content_type}");
        let before = up.count();
        let args = [
            *version,
            "-H",
            &header,
            "-H",
            "te: trailers",
            "--data-binary",
            "AAAAA",
        ];
        let res = curl(
            &stack,
            &auth,
            &[&args[..], &["--request-target", "/pkg.Svc/Get"]].concat(),
        );
        assert_eq!(res.exit, 0, "{content_type}: {}", res.stderr);
        if res.body.contains(SSN) || up.count() > before {
            passed.push(format!(
                "{version} {content_type}: {} leak {}",
                res.status,
                res.body.contains(SSN)
            ));
        }
    }
    passed
}

#[test]
fn grpc_on_a_masked_service_is_refused_whatever_the_content_type_spelling() {
    let passed = grpc_like(&[
        ("--http2", "application/grpc"),
        ("--http2", "Application/GRPC"),
        ("--http2", "application/grpc+proto"),
        ("--http1.1", "application/grpc"),
    ]);
    assert!(passed.is_empty(), "reached the upstream: {passed:#?}");
}

#[test]
fn grpc_web_on_a_masked_service_is_refused() {
    let passed = grpc_like(&[
        ("--http1.1", "application/grpc-web+proto"),
        ("--http1.1", "application/grpc-web-text"),
        ("--http2", "application/grpc-web+proto"),
    ]);
    assert!(passed.is_empty(), "reached the upstream: {passed:#?}");
}
