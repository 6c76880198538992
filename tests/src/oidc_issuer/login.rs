//! The authorization-code flow with PKCE (RFC 6749 §4.1, RFC 7636, OpenID
//! Connect Core 1.0 §3.1) as the console uses it. There is no login page:
//! `/authorize` at once redirects back with a code for the test's
//! [`User`]; `/token` checks the client's credentials (Basic or form), the
//! code (single use), `redirect_uri` and the PKCE verifier (S256) and
//! returns an ID token (with the `nonce`) and an access token;
//! `/userinfo` answers for that access token.
use std::collections::HashMap;

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64},
    Engine,
};
use hyper::{header::HeaderMap, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{json_response, now, sign, Body, State};

/// The person `/authorize` signs in.
#[derive(Debug, Clone, Default)]
pub struct User {
    pub subject: String,
    pub groups: Vec<String>,
}

/// The flow's state: the registered client, the user, codes and access tokens.
#[derive(Default)]
pub(super) struct Login {
    /// `(client_id, client_secret)`.
    pub client: Option<(String, String)>,
    pub user: User,
    codes: HashMap<String, Grant>,
    access: HashMap<String, User>,
}

/// What a code was issued for.
struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    user: User,
}

fn form(text: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(text).into_owned().collect()
}

fn error(status: u16, code: &str) -> Response<Body> {
    json_response(status, &json!({ "error": code }))
}

/// `GET /authorize?response_type=code&client_id&redirect_uri&state&nonce&code_challenge&code_challenge_method=S256`.
pub(super) fn authorize(state: &State, query: &str) -> Response<Body> {
    let q = form(query.as_bytes());
    let mut login = state.login.lock().unwrap();
    let known = login.client.as_ref().map(|(id, _)| id.as_str());
    if q.get("response_type").map(String::as_str) != Some("code")
        || q.get("client_id").map(String::as_str) != known
        || known.is_none()
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return error(400, "invalid_request");
    }
    let (Some(redirect_uri), Some(challenge)) = (q.get("redirect_uri"), q.get("code_challenge"))
    else {
        return error(400, "invalid_request");
    };
    let code = crate::random_hex(16);
    let grant = Grant {
        client_id: q["client_id"].clone(),
        redirect_uri: redirect_uri.clone(),
        challenge: challenge.clone(),
        nonce: q.get("nonce").cloned(),
        user: login.user.clone(),
    };
    login.codes.insert(code.clone(), grant);
    let mut back = form_urlencoded::Serializer::new(String::new());
    back.append_pair("code", &code);
    if let Some(s) = q.get("state") {
        back.append_pair("state", s);
    }
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    Response::builder()
        .status(302)
        .header("location", format!("{redirect_uri}{sep}{}", back.finish()))
        .body(Body::default())
        .expect("redirect")
}

/// `POST /token` with `grant_type=authorization_code`.
pub(super) fn token(state: &State, headers: &HeaderMap, body: &[u8]) -> Response<Body> {
    let f = form(body);
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(i, p)| (i.to_string(), p.to_string()))
        });
    let presented =
        basic.or_else(|| Some((f.get("client_id")?.clone(), f.get("client_secret")?.clone())));
    let mut login = state.login.lock().unwrap();
    if presented.is_none() || presented != login.client {
        return error(401, "invalid_client");
    }
    if f.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return error(400, "unsupported_grant_type");
    }
    let Some(grant) = f.get("code").and_then(|c| login.codes.remove(c)) else {
        return error(400, "invalid_grant");
    };
    let verifier = f.get("code_verifier").map(String::as_str).unwrap_or("");
    if Some(&grant.client_id) != presented.as_ref().map(|(id, _)| id)
        || f.get("redirect_uri") != Some(&grant.redirect_uri)
        || B64.encode(Sha256::digest(verifier.as_bytes())) != grant.challenge
    {
        return error(400, "invalid_grant");
    }
    let t = now();
    let mut claims = json!({
        "iss": state.issuer, "sub": grant.user.subject, "aud": grant.client_id,
        "azp": grant.client_id, "groups": grant.user.groups, "iat": t, "exp": t + 600,
    });
    if let Some(nonce) = grant.nonce {
        claims["nonce"] = Value::String(nonce);
    }
    let id_token = {
        let keys = state.keys.lock().unwrap();
        sign(
            keys.iter().find(|k| k.published).expect("a published key"),
            &claims,
        )
    };
    let access_token = crate::random_hex(24);
    login.access.insert(access_token.clone(), grant.user);
    json_response(
        200,
        &json!({
            "access_token": access_token, "token_type": "Bearer", "expires_in": 600,
            "id_token": id_token, "scope": "openid",
        }),
    )
}

/// `GET /userinfo` with `Authorization: Bearer <access token>`.
pub(super) fn userinfo(state: &State, headers: &HeaderMap) -> Response<Body> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let login = state.login.lock().unwrap();
    match token.and_then(|t| login.access.get(t)) {
        Some(user) => json_response(200, &json!({ "sub": user.subject, "groups": user.groups })),
        None => error(401, "invalid_token"),
    }
}
