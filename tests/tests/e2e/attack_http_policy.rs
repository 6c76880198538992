//! HTTP rules decide on what the upstream acts on, and JSON masking covers
//! JSON however it is labelled (security issue 21, items 4 and 5). Each
//! request here passed a `DELETE /v1/customers/*` deny rule, or came back
//! unmasked, before the fix.
use sluice_tests::{CurlResult, ServiceSpec, Stack};

use crate::{assert_status, bearer};

const SERVICE: &str = "payments-api";
const HOST: &str = "api.payments.test";
const DENY: &str = r#"deny = [{ method = "DELETE", path = "/v1/customers/*" }]"#;
const SSN: &str = "123-45-6789";
const CARD: &str = "4111111111111111";

fn stack(label: &str, extra: &str) -> (Stack, String) {
    let stack = Stack::builder(label)
        .service(ServiceSpec::https(SERVICE, HOST).extra(extra))
        .start()
        .expect("start the stack");
    let token = stack.token(SERVICE).unwrap();
    (stack, bearer(&token))
}

/// curl as the agent with `args`, then the service's base URL.
fn curl(stack: &Stack, auth: &str, args: &[&str]) -> CurlResult {
    let mut all = vec!["--http1.1", "-H", auth];
    all.extend_from_slice(args);
    let url = stack.url(SERVICE, "/");
    all.push(&url);
    stack.curl(&all).unwrap()
}

#[test]
fn variants_of_a_denied_request_are_refused_and_never_reach_the_upstream() {
    let (stack, auth) = stack("http-deny-variants", DENY);
    let target = |t: &'static str| ["--path-as-is", "--request-target", t];
    let cases: Vec<(&str, Vec<&str>, u16)> = vec![
        (
            "plain",
            [&["-X", "DELETE"][..], &target("/v1/customers/42")].concat(),
            403,
        ),
        (
            "letter case",
            [&["-X", "DELETE"][..], &target("/V1/Customers/42")].concat(),
            403,
        ),
        (
            "encoded letters",
            [&["-X", "DELETE"][..], &target("/v1/%63ustomers/42")].concat(),
            403,
        ),
        (
            "encoded slash",
            [&["-X", "DELETE"][..], &target("/v1/customers%2F42")].concat(),
            403,
        ),
        (
            "path parameter",
            [&["-X", "DELETE"][..], &target("/v1/customers;v=1/42")].concat(),
            400,
        ),
        (
            "encoded path parameter",
            [&["-X", "DELETE"][..], &target("/v1/customers%3Bv=1/42")].concat(),
            400,
        ),
        (
            "backslashes",
            [&["-X", "DELETE"][..], &target("/v1\\customers\\42")].concat(),
            400,
        ),
        (
            "encoded backslash",
            [&["-X", "DELETE"][..], &target("/v1%5Ccustomers%5C42")].concat(),
            400,
        ),
        (
            "dot segment",
            [&["-X", "DELETE"][..], &target("/v1/x/../customers/42")].concat(),
            400,
        ),
        (
            "encoded dot segment",
            [&["-X", "DELETE"][..], &target("/v1/x/%2e%2e/customers/42")].concat(),
            400,
        ),
        (
            "empty segment",
            [&["-X", "DELETE"][..], &target("/v1//customers/42")].concat(),
            400,
        ),
        (
            "double encoding",
            [&["-X", "DELETE"][..], &target("/v1/%2563ustomers/42")].concat(),
            400,
        ),
        (
            "override header",
            [
                &["-X", "POST", "-H", "X-HTTP-Method-Override: DELETE"][..],
                &target("/v1/customers/42"),
            ]
            .concat(),
            403,
        ),
        (
            "X-HTTP-Method",
            [
                &["-X", "POST", "-H", "X-HTTP-Method: delete"][..],
                &target("/v1/customers/42"),
            ]
            .concat(),
            403,
        ),
        (
            "X-Method-Override",
            [
                &["-X", "POST", "-H", "X-Method-Override: DELETE"][..],
                &target("/v1/customers/42"),
            ]
            .concat(),
            403,
        ),
        (
            "_method parameter",
            [
                &["-X", "POST"][..],
                &target("/v1/customers/42?_method=DELETE"),
            ]
            .concat(),
            403,
        ),
        (
            "_method form field",
            [
                &["-d", "_method=DELETE&x=1"][..],
                &target("/v1/customers/42"),
            ]
            .concat(),
            403,
        ),
        (
            "_method multipart field",
            [&["-F", "_method=DELETE"][..], &target("/v1/customers/42")].concat(),
            403,
        ),
    ];
    for (what, args, want) in &cases {
        let res = curl(&stack, &auth, args);
        assert_eq!(
            (res.exit, res.status),
            (0, *want),
            "{what}: curl exit {} status {}: {}",
            res.exit,
            res.status,
            res.body
        );
    }
    let up = stack.upstream(SERVICE);
    assert_eq!(
        up.count(),
        0,
        "a refused request reached the upstream: {:?}",
        up.requests()
    );

    // What the rules do not cover still works, on the same service.
    for args in [
        &target("/v1/customers/42")[..],
        &[&["-X", "DELETE"][..], &target("/v1/orders/7")].concat(),
        &[
            &["-X", "POST", "-H", "X-HTTP-Method-Override: PATCH"][..],
            &target("/v1/customers/42"),
        ]
        .concat(),
    ] {
        assert_status(&curl(&stack, &auth, args), 200);
    }
    let seen: Vec<String> = up
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path()))
        .collect();
    assert_eq!(
        seen,
        [
            "GET /v1/customers/42",
            "DELETE /v1/orders/7",
            "POST /v1/customers/42"
        ]
    );

    let denied = stack.sluice.audit_events().unwrap();
    let rules: Vec<&str> = denied
        .iter()
        .filter(|e| e["event"] == "denied")
        .filter_map(|e| e["rule"].as_str())
        .collect();
    assert_eq!(
        rules.len(),
        cases.len(),
        "one denied line per refusal: {rules:?}"
    );
    assert!(rules.contains(&"AMBIGUOUS_REQUEST") && rules.contains(&"DELETE /v1/customers/*"));
}

#[test]
fn a_service_without_rules_forwards_unusual_paths() {
    let (stack, auth) = stack("http-no-rules-paths", "");
    let res = curl(
        &stack,
        &auth,
        &["--path-as-is", "--request-target", "/a//b;v=1/./c"],
    );
    assert_status(&res, 200);
    assert_eq!(
        stack.upstream(SERVICE).last().unwrap().path(),
        "/a//b;v=1/./c"
    );
}

#[test]
fn json_is_masked_whatever_its_content_type_key_case_or_spacing() {
    let (stack, auth) = stack("http-mask-variants", r#"mask = ["ssn", "card.number"]"#);
    let up = stack.upstream(SERVICE);
    let doc = format!(r#"{{"SSN":"{SSN}","Card":{{" Number ":"{CARD}"}},"name":"Ann"}}"#);
    let ndjson = format!("{{\"ssn\":\"{SSN}\"}}\n{{\"customer\":{{\"Ssn \":\"{SSN}\"}}}}\n");
    let cases: Vec<(&str, Option<&str>, String)> = vec![
        ("application/json", Some("application/json"), doc.clone()),
        ("text/plain", Some("text/plain"), doc.clone()),
        ("no content type", None, doc.clone()),
        (
            "byte order mark",
            Some("text/plain; charset=utf-8"),
            format!("\u{feff}{doc}"),
        ),
        ("NDJSON", Some("application/x-ndjson"), ndjson.clone()),
        ("NDJSON as text", Some("text/plain"), ndjson),
    ];
    for (what, content_type, body) in &cases {
        up.respond_with_type(200, *content_type, body);
        let res = curl(&stack, &auth, &["--request-target", "/v1/customers/1"]);
        assert_status(&res, 200);
        assert!(
            !res.body.contains(SSN) && !res.body.contains(CARD) && res.body.contains("****"),
            "{what}: unmasked: {}",
            res.body
        );
        assert!(
            res.body.contains("Ann") || *what == "NDJSON" || *what == "NDJSON as text",
            "{what}: {}",
            res.body
        );
    }

    // Not JSON: passed on as it came.
    up.respond_with_type(200, Some("text/html"), "<p>no secrets here</p>");
    let res = curl(&stack, &auth, &["--request-target", "/v1/page"]);
    assert_status(&res, 200);
    assert_eq!(res.body, "<p>no secrets here</p>");
    // Declared JSON that does not parse: refused, never passed unmasked.
    up.respond_with_type(
        200,
        Some("application/json"),
        &format!("{{\"ssn\":\"{SSN}\""),
    );
    let res = curl(&stack, &auth, &["--request-target", "/v1/customers/1"]);
    assert_status(&res, 502);
    assert!(!res.body.contains(SSN), "{}", res.body);
    // An event stream cannot be buffered to be masked: refused.
    up.respond_with_type(
        200,
        Some("text/event-stream"),
        &format!("data: {{\"ssn\":\"{SSN}\"}}\n\n"),
    );
    let res = curl(&stack, &auth, &["--request-target", "/v1/events"]);
    assert_status(&res, 502);
    assert!(!res.body.contains(SSN), "{}", res.body);

    let masked = stack
        .sluice
        .audit_events()
        .unwrap()
        .into_iter()
        .filter(|e| e["event"] == "masked")
        .count();
    assert_eq!(masked, cases.len(), "one masked line per masked response");
    stack.assert_no_secret_leaked();
}
