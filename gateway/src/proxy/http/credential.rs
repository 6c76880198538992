//! Finding the agent's `slt_…` token (or OIDC JWT, DESIGN.md §7) in a request and putting the real
//! credential in its place (DESIGN.md §4 "Tokens").
//!
//! The token may be in any header value (e.g. `Authorization: Bearer slt_…`,
//! `x-api-key: slt_…`), inside Basic auth's base64 `user:password`
//! (RFC 7617), or in a query parameter value. Where it goes:
//! - `credential.header` set: every place holding the token is removed and
//!   `header: format` is set, `{}` in `format` (default `{}`) standing for the
//!   secret;
//! - `credential.query` set: every place is removed and `?query=secret` added;
//! - neither: the token is replaced by the secret where it was.
//!
//! Secret header values are marked sensitive so HPACK never indexes them
//! (RFC 7541 §7.1.3).
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use hyper::{
    header::{HeaderName, HeaderValue, AUTHORIZATION},
    http::request::Parts,
    Uri,
};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

use crate::{config::Injection, identity, tokens};

/// Characters left unescaped in query values: RFC 3986 unreserved.
pub(crate) const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Header(HeaderName),
    BasicAuth,
    Query(String),
}

/// A token found in a request, and every place it occurs.
pub struct FoundToken {
    pub token: Zeroizing<String>,
    places: Vec<Place>,
}

/// Errors while locating or replacing tokens. Messages never include a
/// token or a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("more than one distinct sluice token in the request")]
    Ambiguous,
    #[error("the stored secret cannot be carried in an HTTP header or URL")]
    UnencodableSecret,
}

fn basic_credentials(value: &HeaderValue) -> Option<Zeroizing<String>> {
    let text = value.to_str().ok()?;
    let (scheme, b64) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = Zeroizing::new(B64.decode(b64.trim()).ok()?);
    Some(Zeroizing::new(String::from_utf8(bytes.to_vec()).ok()?))
}

/// Finds the token in `parts`.
///
/// # Errors
/// [`CredentialError::Ambiguous`] when two different tokens are present.
pub fn find(parts: &Parts) -> Result<Option<FoundToken>, CredentialError> {
    let mut token: Option<Zeroizing<String>> = None;
    let mut places = Vec::new();
    let mut note = |candidate: &str, place: Place| -> Result<(), CredentialError> {
        let found = tokens::find(candidate).or_else(|| identity::find_jwt(candidate));
        let Some(range) = found else {
            return Ok(());
        };
        let t = &candidate[range];
        match &token {
            Some(existing) if existing.as_str() != t => return Err(CredentialError::Ambiguous),
            Some(_) => {}
            None => token = Some(Zeroizing::new(t.to_string())),
        }
        if !places.contains(&place) {
            places.push(place);
        }
        Ok(())
    };
    for (name, value) in parts.headers.iter() {
        if name == AUTHORIZATION {
            if let Some(creds) = basic_credentials(value) {
                note(&creds, Place::BasicAuth)?;
                continue;
            }
        }
        if let Ok(text) = value.to_str() {
            note(text, Place::Header(name.clone()))?;
        }
    }
    if let Some(query) = parts.uri.query() {
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = Zeroizing::new(percent_decode_str(v).decode_utf8_lossy().into_owned());
            note(&v, Place::Query(k.to_string()))?;
        }
    }
    Ok(token.map(|token| FoundToken { token, places }))
}

fn header_value(bytes: &[u8]) -> Result<HeaderValue, CredentialError> {
    let mut v = HeaderValue::from_bytes(bytes).map_err(|_| CredentialError::UnencodableSecret)?;
    v.set_sensitive(true);
    Ok(v)
}

/// Replaces the token found by [`find`] with `secret` where `injection`
/// says.
///
/// # Errors
/// [`CredentialError::UnencodableSecret`] when the secret is not valid in a
/// header (control characters) or not UTF-8 for a URL.
pub fn inject(
    parts: &mut Parts,
    found: &FoundToken,
    injection: &Injection,
    secret: &[u8],
) -> Result<(), CredentialError> {
    let token = found.token.as_str();
    let secret_text =
        || std::str::from_utf8(secret).map_err(|_| CredentialError::UnencodableSecret);
    let in_place = *injection == Injection::InPlace;
    let mut query_edits: Vec<(String, Option<Zeroizing<String>>)> = Vec::new();
    for place in &found.places {
        match place {
            Place::Header(name) if in_place => {
                let values: Vec<HeaderValue> =
                    parts.headers.get_all(name).iter().cloned().collect();
                parts.headers.remove(name);
                for v in values {
                    let bytes = replace_bytes(v.as_bytes(), token.as_bytes(), secret);
                    parts.headers.append(name.clone(), header_value(&bytes)?);
                }
            }
            Place::BasicAuth if in_place => {
                let creds = parts
                    .headers
                    .get(AUTHORIZATION)
                    .and_then(basic_credentials)
                    .unwrap_or_default();
                let replaced =
                    Zeroizing::new(replace_bytes(creds.as_bytes(), token.as_bytes(), secret));
                let value = Zeroizing::new(format!("Basic {}", B64.encode(&*replaced)));
                parts
                    .headers
                    .insert(AUTHORIZATION, header_value(value.as_bytes())?);
            }
            Place::Query(key) if in_place => {
                let encoded = utf8_percent_encode(secret_text()?, QUERY_VALUE).to_string();
                query_edits.push((key.clone(), Some(Zeroizing::new(encoded))));
            }
            Place::Header(name) => {
                parts.headers.remove(name);
            }
            Place::BasicAuth => {
                parts.headers.remove(AUTHORIZATION);
            }
            Place::Query(key) => query_edits.push((key.clone(), None)),
        }
    }
    if let Injection::Header { name, format } = injection {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| CredentialError::UnencodableSecret)?;
        let (before, after) = format.split_once("{}").unwrap_or((format, ""));
        let mut value = Zeroizing::new(Vec::with_capacity(
            before.len() + secret.len() + after.len(),
        ));
        value.extend_from_slice(before.as_bytes());
        value.extend_from_slice(secret);
        value.extend_from_slice(after.as_bytes());
        parts.headers.insert(name, header_value(&value)?);
    }
    if let Injection::Query { name: key } = injection {
        let encoded = utf8_percent_encode(secret_text()?, QUERY_VALUE).to_string();
        query_edits.push((format!("+{key}"), Some(Zeroizing::new(encoded))));
    }
    if !query_edits.is_empty() {
        parts.uri = edit_query(&parts.uri, &query_edits)?;
    }
    Ok(())
}

/// Applies query edits: `(key, Some(v))` sets `key`'s value, `(key, None)`
/// removes it, and a key starting with `+` is appended.
fn edit_query(
    uri: &Uri,
    edits: &[(String, Option<Zeroizing<String>>)],
) -> Result<Uri, CredentialError> {
    let mut pairs: Vec<String> = Vec::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        match edits.iter().find(|(k, _)| k == key) {
            Some((_, Some(v))) => pairs.push(format!("{key}={}", v.as_str())),
            Some((_, None)) => {}
            None => pairs.push(pair.to_string()),
        }
    }
    for (k, v) in edits {
        if let (Some(k), Some(v)) = (k.strip_prefix('+'), v) {
            pairs.push(format!("{k}={}", v.as_str()));
        }
    }
    let path = uri.path();
    let pq = Zeroizing::new(if pairs.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", pairs.join("&"))
    });
    let mut builder = Uri::builder();
    if let Some(s) = uri.scheme() {
        builder = builder.scheme(s.clone());
    }
    if let Some(a) = uri.authority() {
        builder = builder.authority(a.clone());
    }
    builder
        .path_and_query(pq.as_str())
        .build()
        .map_err(|_| CredentialError::UnencodableSecret)
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    const TOKEN: &str = "slt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    fn cred(header: Option<&str>, format: Option<&str>, query: Option<&str>) -> Injection {
        match (header, query) {
            (Some(name), _) => Injection::Header {
                name: name.into(),
                format: format.unwrap_or("{}").into(),
            },
            (None, Some(name)) => Injection::Query { name: name.into() },
            (None, None) => Injection::InPlace,
        }
    }

    #[test]
    fn bearer_header_is_reformatted() {
        let mut p = parts(
            Request::get("/x")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(())
                .unwrap(),
        );
        let found = find(&p).unwrap().unwrap();
        inject(
            &mut p,
            &found,
            &cred(Some("Authorization"), Some("Bearer {}"), None),
            b"sk_live_1",
        )
        .unwrap();
        assert_eq!(p.headers["authorization"], "Bearer sk_live_1");
        assert!(p.headers["authorization"].is_sensitive());
    }

    #[test]
    fn api_key_header_moves_to_the_configured_header() {
        let mut p = parts(
            Request::get("/x")
                .header("x-api-key", TOKEN)
                .body(())
                .unwrap(),
        );
        let found = find(&p).unwrap().unwrap();
        inject(
            &mut p,
            &found,
            &cred(Some("Authorization"), Some("Bearer {}"), None),
            b"k",
        )
        .unwrap();
        assert!(p.headers.get("x-api-key").is_none());
        assert_eq!(p.headers["authorization"], "Bearer k");
    }

    #[test]
    fn basic_auth_is_replaced_in_place() {
        let basic = format!("Basic {}", B64.encode(format!("user:{TOKEN}")));
        let mut p = parts(
            Request::get("/x")
                .header("authorization", basic)
                .body(())
                .unwrap(),
        );
        let found = find(&p).unwrap().unwrap();
        inject(&mut p, &found, &cred(None, None, None), b"pw").unwrap();
        assert_eq!(
            p.headers["authorization"],
            format!("Basic {}", B64.encode("user:pw"))
        );
    }

    #[test]
    fn query_parameter_is_replaced_and_encoded() {
        let mut p = parts(
            Request::get(format!("/x?a=1&api_key={TOKEN}&b=2"))
                .body(())
                .unwrap(),
        );
        let found = find(&p).unwrap().unwrap();
        inject(&mut p, &found, &cred(None, None, None), b"a b&c").unwrap();
        assert_eq!(p.uri.to_string(), "/x?a=1&api_key=a%20b%26c&b=2");
    }

    #[test]
    fn query_token_moves_to_header() {
        let mut p = parts(
            Request::get(format!("/x?api_key={TOKEN}"))
                .body(())
                .unwrap(),
        );
        let found = find(&p).unwrap().unwrap();
        inject(&mut p, &found, &cred(Some("x-api-key"), None, None), b"k").unwrap();
        assert_eq!(p.uri.to_string(), "/x");
        assert_eq!(p.headers["x-api-key"], "k");
    }

    #[test]
    fn two_different_tokens_are_ambiguous() {
        let other = TOKEN.replace('A', "B");
        let p = parts(
            Request::get(format!("/x?k={other}"))
                .header("x-api-key", TOKEN)
                .body(())
                .unwrap(),
        );
        assert_eq!(find(&p).err(), Some(CredentialError::Ambiguous));
    }

    #[test]
    fn no_token_is_none() {
        let p = parts(
            Request::get("/x?q=slt_short")
                .header("authorization", "Bearer abc")
                .body(())
                .unwrap(),
        );
        assert!(find(&p).unwrap().is_none());
    }
}
