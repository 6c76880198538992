//! The fixture against curl and jsonwebtoken: what it publishes verifies
//! what it mints, the malformed tokens do not, and the PKCE flow checks
//! what it should.
use std::process::Command;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::*;

const IP: &str = "127.0.77.1";

fn curl(issuer: &OidcIssuer, args: &[&str]) -> (String, String) {
    let addr = issuer.addr();
    let out = Command::new("curl")
        .args(["-sS", "-D", "/dev/stderr", "--cacert"])
        .arg(issuer.ca_path())
        .args([
            "--resolve",
            &format!("{HOST}:{}:{}", addr.port(), addr.ip()),
        ])
        .args(args)
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn verify(issuer: &OidcIssuer, token: &str, audience: &str) -> Result<Value, String> {
    let (jwks, _) = curl(issuer, &[&format!("{}/jwks", issuer.issuer())]);
    let jwks: JwkSet = serde_json::from_str(&jwks).map_err(|e| e.to_string())?;
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let jwk = jwks
        .find(header.kid.as_deref().unwrap_or(""))
        .ok_or("unknown kid")?;
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[issuer.issuer()]);
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    decode::<Value>(token, &key, &v)
        .map(|t| t.claims)
        .map_err(|e| e.to_string())
}

#[test]
fn publishes_what_verifies_its_tokens_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut issuer = OidcIssuer::start_on(dir.path(), IP.parse().unwrap()).unwrap();
    let (discovery, _) = curl(
        &issuer,
        &[&format!(
            "{}/.well-known/openid-configuration",
            issuer.issuer()
        )],
    );
    let discovery: Value = serde_json::from_str(&discovery).unwrap();
    assert_eq!(discovery["issuer"], issuer.issuer());
    let claims = issuer.claims("sluice", "repo:acme/app", &["payments"]);
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let got = verify(&issuer, &issuer.mint(kid, &claims), "sluice").unwrap();
        assert_eq!(got["sub"], "repo:acme/app", "{kid}");
    }
    let good = issuer.mint("rsa-1", &claims);
    let mut other = claims.clone();
    other["sub"] = "repo:evil/app".into();
    assert!(verify(&issuer, &tamper(&good, &other), "sluice").is_err());
    assert!(verify(&issuer, &issuer.alg_none("rsa-1", &claims), "sluice").is_err());
    assert!(verify(&issuer, &issuer.mint("rsa-1", &claims), "other").is_err());
    issuer.add_unpublished_key(Alg::Es256, "hidden").unwrap();
    assert_eq!(
        verify(&issuer, &issuer.mint("hidden", &claims), "sluice").unwrap_err(),
        "unknown kid"
    );
    issuer.add_key(Alg::Es256, "ec-2").unwrap();
    assert!(verify(&issuer, &issuer.mint("ec-2", &claims), "sluice").is_ok());
    issuer.stop();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-k"])
        .arg(format!("https://{}/jwks", issuer.addr()))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a stopped issuer refuses connections"
    );
    issuer.start().unwrap();
    assert!(verify(&issuer, &good, "sluice").is_ok());
}

#[test]
fn authorization_code_with_pkce() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = OidcIssuer::start_on(dir.path(), "127.0.77.2".parse().unwrap()).unwrap();
    issuer.set_client("console", "s3cret");
    issuer.set_user("alice", &["security"]);
    let verifier = "v".repeat(50);
    let challenge = B64.encode(Sha256::digest(verifier.as_bytes()));
    let redirect = "https://127.0.0.1:9443/callback";
    let curl = |args: &[&str]| curl(&issuer, args);
    let (_, head) = curl(&[&format!(
        "{}/authorize?response_type=code&client_id=console&redirect_uri={}&state=st&nonce=n1&code_challenge={challenge}&code_challenge_method=S256",
        issuer.issuer(),
        form_urlencoded::byte_serialize(redirect.as_bytes()).collect::<String>()
    )]);
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("a redirect")
        .trim();
    assert!(
        location.starts_with(redirect) && location.contains("state=st"),
        "{location}"
    );
    let code = location
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let token = |code: &str, verifier: &str, secret: &str| {
        curl(&[
            "-u",
            &format!("console:{secret}"),
            "--data-urlencode",
            "grant_type=authorization_code",
            "--data-urlencode",
            &format!("code={code}"),
            "--data-urlencode",
            &format!("redirect_uri={redirect}"),
            "--data-urlencode",
            &format!("code_verifier={verifier}"),
            &format!("{}/token", issuer.issuer()),
        ])
        .0
    };
    assert!(token(code, &verifier, "wrong").contains("invalid_client"));
    assert!(token(code, "x".repeat(50).as_str(), "s3cret").contains("invalid_grant"));
    // The failed attempt used the code up.
    let (_, head) = curl(&[&format!(
        "{}/authorize?response_type=code&client_id=console&redirect_uri={redirect}&nonce=n2&code_challenge={challenge}&code_challenge_method=S256",
        issuer.issuer()
    )]);
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    let code = location
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let answer: Value = serde_json::from_str(&token(code, &verifier, "s3cret")).unwrap();
    let id = verify(&issuer, answer["id_token"].as_str().unwrap(), "console").unwrap();
    assert_eq!(
        (id["sub"].as_str(), id["nonce"].as_str()),
        (Some("alice"), Some("n2"))
    );
    let (info, _) = curl(&[
        "-H",
        &format!(
            "authorization: Bearer {}",
            answer["access_token"].as_str().unwrap()
        ),
        &format!("{}/userinfo", issuer.issuer()),
    ]);
    assert!(info.contains("security"), "{info}");
}
