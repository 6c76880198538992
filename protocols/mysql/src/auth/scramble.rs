//! What a client sends for each plugin, from the password and the server's
//! nonce. Hashes from the `sha1`/`sha2` crates, signatures from
//! `ed25519-dalek`; nothing here is a hand-written primitive.
//!
//! - `mysql_native_password` (MySQL Internals, "Native Authentication"):
//!   `SHA1(pw) XOR SHA1(nonce ‖ SHA1(SHA1(pw)))`.
//! - `caching_sha2_password` fast path (MySQL Internals, "Caching_sha2
//!   authentication"): `SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) ‖ nonce)`.
//! - MariaDB `client_ed25519` (MariaDB KB, "Authentication Plugin -
//!   ed25519"): an Ed25519 (RFC 8032) signature of the nonce whose
//!   expanded secret key is `SHA512(pw)` — the password takes the place of
//!   the 32-byte seed, at any length.
use ed25519_dalek::{hazmat::ExpandedSecretKey, VerifyingKey};
use sha1::{Digest, Sha1};
use sha2::{Sha256, Sha512};
use zeroize::Zeroizing;

/// `mysql_native_password`'s 20-byte answer; empty for an empty password.
pub fn native_password(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1: Zeroizing<[u8; 20]> = Zeroizing::new(Sha1::digest(password).into());
    let stage2 = Sha1::digest(*stage1);
    let mask = Sha1::new()
        .chain_update(nonce)
        .chain_update(stage2)
        .finalize();
    xor(&*stage1, &mask)
}

/// `caching_sha2_password`'s 32-byte fast-path answer; empty for an empty
/// password.
pub fn caching_sha2(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1: Zeroizing<[u8; 32]> = Zeroizing::new(Sha256::digest(password).into());
    let stage2 = Sha256::digest(*stage1);
    let mask = Sha256::new()
        .chain_update(stage2)
        .chain_update(nonce)
        .finalize();
    xor(&*stage1, &mask)
}

/// `client_ed25519`'s 64-byte signature of `nonce`.
pub fn ed25519(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    let key = ed25519_key(password);
    let public = VerifyingKey::from(&key);
    ed25519_dalek::hazmat::raw_sign::<Sha512>(&key, nonce, &public)
        .to_bytes()
        .to_vec()
}

/// The Ed25519 public key MariaDB stores for `password` (what
/// `ED25519_PASSWORD('…')` returns, before base64), for tests and setup.
pub fn ed25519_public_key(password: &[u8]) -> [u8; 32] {
    VerifyingKey::from(&ed25519_key(password)).to_bytes()
}

fn ed25519_key(password: &[u8]) -> ExpandedSecretKey {
    let hash = Zeroizing::new(<[u8; 64]>::from(Sha512::digest(password)));
    ExpandedSecretKey::from_bytes(&hash)
}

/// `a XOR b`, cycling `b` (the RSA exchange XORs the password with the
/// nonce this way).
pub fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b.iter().cycle()).map(|(x, y)| x ^ y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn ed25519_public_key_is_what_mariadb_stores() {
        // MariaDB 10.11: CREATE USER … IDENTIFIED VIA ed25519 USING
        // PASSWORD('secret') stores base64 "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY".
        let hex: String = ed25519_public_key(b"secret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "648814444520e4f56043a2ec9215e63be7992d2d270bc6dee873e36164786096"
        );
    }

    #[test]
    fn ed25519_signature_verifies_under_the_derived_public_key() {
        let sig = ed25519(
            b"pw with any length, not 32 bytes",
            b"0123456789abcdefghij0123456789ab",
        );
        let public =
            VerifyingKey::from_bytes(&ed25519_public_key(b"pw with any length, not 32 bytes"))
                .unwrap();
        let sig = Signature::from_slice(&sig).unwrap();
        assert!(public
            .verify(b"0123456789abcdefghij0123456789ab", &sig)
            .is_ok());
        assert!(public.verify(b"another nonce", &sig).is_err());
    }
}
