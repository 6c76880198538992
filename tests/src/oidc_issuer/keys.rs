//! The issuer's signing keys and their JWKS entries (RFC 7517 §4, RFC 7518
//! §6): RSA (RS256), P-256 (ES256) and Ed25519 (EdDSA, RFC 8037 §2).
//!
//! EC and Ed25519 keys come from rcgen (ring); RSA keys from `openssl
//! genpkey`, since ring cannot generate RSA keys and a debug-built bignum
//! library takes too long.
use std::process::Command;

use anyhow::{bail, Context, Result};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

/// The signature algorithms the fixture signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit key.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    pub(super) fn jwt(self) -> Algorithm {
        match self {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// One signing key: its `kid`, the private key and the public JWK.
pub(super) struct SigningKey {
    pub kid: String,
    pub alg: Alg,
    pub encoding: EncodingKey,
    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub jwk: Value,
    /// The public key, PEM (SubjectPublicKeyInfo); RSA keys only (the
    /// "HS256 with the public key as secret" attack needs it).
    pub public_pem: Option<String>,
    /// Whether the JWKS lists it (an unpublished key signs "unknown kid" tokens).
    pub published: bool,
}

impl SigningKey {
    /// A fresh key of `alg` named `kid`.
    pub fn generate(alg: Alg, kid: &str) -> Result<SigningKey> {
        let (encoding, mut jwk, public_pem) = match alg {
            Alg::Rs256 => rsa()?,
            Alg::Es256 => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let raw = key.public_key_raw();
                anyhow::ensure!(raw.len() == 65 && raw[0] == 4, "uncompressed P-256 point");
                let jwk = json!({
                    "kty": "EC", "crv": "P-256",
                    "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..]),
                });
                (
                    EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())?,
                    jwk,
                    None,
                )
            }
            Alg::EdDsa => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
                let jwk = json!({
                    "kty": "OKP", "crv": "Ed25519", "x": B64.encode(key.public_key_raw()),
                });
                (
                    EncodingKey::from_ed_pem(key.serialize_pem().as_bytes())?,
                    jwk,
                    None,
                )
            }
        };
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        jwk["alg"] = format!("{:?}", alg.jwt()).into();
        Ok(SigningKey {
            kid: kid.to_string(),
            alg,
            encoding,
            jwk,
            public_pem,
            published: true,
        })
    }
}

/// A 2048-bit RSA key: the encoding key, its JWK (`n`, `e`) and public PEM.
fn rsa() -> Result<(EncodingKey, Value, Option<String>)> {
    let private = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        None,
    )?;
    let public = openssl(&["pkey", "-pubout"], Some(&private))?;
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(private.as_bytes())
        .map(|k: rustls_pki_types::PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec())
        .context("openssl wrote no PKCS#8 key")?;
    let ring_key = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| anyhow::anyhow!("ring rejects the RSA key: {e}"))?;
    let public_key = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(ring_key.public());
    let jwk =
        json!({ "kty": "RSA", "n": B64.encode(&public_key.n), "e": B64.encode(&public_key.e) });
    Ok((
        EncodingKey::from_rsa_pem(private.as_bytes())?,
        jwk,
        Some(public),
    ))
}

/// Runs `openssl ARGS` with `input` on stdin; its stdout.
fn openssl(args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run openssl (apt-get install openssl)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.unwrap_or("").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
