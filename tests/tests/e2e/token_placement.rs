//! The token goes wherever the real key would go; Sluice puts the secret
//! where the service's `credential` says.
use base64::Engine;
use sluice_tests::{Credential, ServiceSpec, Stack};

use crate::{assert_no_token, assert_status, bearer, WAIT};

fn one_service(label: &str, spec: ServiceSpec) -> Stack {
    Stack::builder(label)
        .service(spec)
        .start()
        .expect("start the stack")
}

#[test]
fn token_in_x_api_key_header_is_swapped_for_the_secret() {
    let stack = one_service(
        "x-api-key",
        ServiceSpec::https("keys-api", "api.keys.test").credential(Credential::header("x-api-key")),
    );
    let token = stack.token("keys-api").unwrap();
    let res = stack
        .curl(&[
            "-H",
            &format!("x-api-key: {token}"),
            &stack.url("keys-api", "/v1/models"),
        ])
        .unwrap();
    assert_status(&res, 200);
    let got = &stack.upstream("keys-api").wait_for(1, WAIT).unwrap()[0];
    assert_eq!(got.header("x-api-key"), Some(stack.secret("keys-api")));
    assert_eq!(
        got.headers.iter().filter(|(n, _)| n == "x-api-key").count(),
        1
    );
    assert_no_token(got);
    stack.assert_no_secret_leaked();
}

#[test]
fn token_as_basic_auth_password_is_swapped_and_re_encoded() {
    let stack = one_service(
        "basic-auth",
        ServiceSpec::https("basic-api", "api.basic.test").credential(Credential::InPlace),
    );
    let token = stack.token("basic-api").unwrap();
    let res = stack
        .curl(&[
            "-u",
            &format!("svc-user:{token}"),
            &stack.url("basic-api", "/v1/reports"),
        ])
        .unwrap();
    assert_status(&res, 200);
    let got = &stack.upstream("basic-api").wait_for(1, WAIT).unwrap()[0];
    let auth = got
        .header("authorization")
        .expect("Authorization header at the upstream");
    let encoded = auth
        .strip_prefix("Basic ")
        .unwrap_or_else(|| panic!("not Basic auth: {auth:?}"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        format!("svc-user:{}", stack.secret("basic-api"))
    );
    assert_no_token(got);
    stack.assert_no_secret_leaked();
}

#[test]
fn token_in_api_key_query_parameter_is_swapped_for_the_secret() {
    let stack = one_service(
        "query-param",
        ServiceSpec::https("query-api", "api.query.test")
            .credential(Credential::Query("api_key".into())),
    );
    let token = stack.token("query-api").unwrap();
    let res = stack
        .curl(&[&stack.url("query-api", &format!("/v1/items?api_key={token}&limit=5"))])
        .unwrap();
    assert_status(&res, 200);
    let got = &stack.upstream("query-api").wait_for(1, WAIT).unwrap()[0];
    assert_eq!(got.path(), "/v1/items");
    let api_keys: Vec<_> = got
        .query_params()
        .into_iter()
        .filter(|(k, _)| k == "api_key")
        .collect();
    assert_eq!(
        api_keys,
        [("api_key".to_string(), stack.secret("query-api").to_string())]
    );
    assert_eq!(got.query("limit").as_deref(), Some("5"));
    assert_no_token(got);
    stack.assert_no_secret_leaked();
}

#[test]
fn token_in_a_header_moves_to_the_query_parameter_the_service_wants() {
    let stack = one_service(
        "header-to-query",
        ServiceSpec::https("query-api", "api.query.test")
            .credential(Credential::Query("api_key".into())),
    );
    let token = stack.token("query-api").unwrap();
    let res = stack
        .curl(&[
            "-H",
            &bearer(&token),
            &stack.url("query-api", "/v1/items?limit=5"),
        ])
        .unwrap();
    assert_status(&res, 200);
    let got = &stack.upstream("query-api").wait_for(1, WAIT).unwrap()[0];
    assert_eq!(
        got.header("authorization"),
        None,
        "the token's header is removed"
    );
    assert_eq!(
        got.query("api_key").as_deref(),
        Some(stack.secret("query-api"))
    );
    assert_eq!(got.query("limit").as_deref(), Some("5"));
    assert_no_token(got);
    stack.assert_no_secret_leaked();
}
