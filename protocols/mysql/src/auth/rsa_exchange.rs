//! `caching_sha2_password` full authentication without TLS (MySQL
//! Internals, "Caching_sha2 authentication", RSA key exchange): the client
//! asks for the server's public key (`0x02`), receives it as PEM, and sends
//! `RSA-OAEP(SHA-1)(password ‖ NUL XOR nonce)`.
//!
//! A server that is not authenticated can hand out any key, so Sluice uses
//! this only where `upstream_tls = "disable"` allows a password towards an
//! unverified server. Encryption only: the `rsa` crate's timing issue
//! (RUSTSEC-2023-0071) concerns private-key operations, which never run here.
use rsa::{pkcs8::DecodePublicKey, Oaep, RsaPublicKey};
use zeroize::Zeroizing;

use super::scramble::xor;

/// Why the password could not be encrypted.
#[derive(Debug, thiserror::Error)]
pub enum RsaExchangeError {
    /// The server's key is not a PEM `PUBLIC KEY` (SPKI) or PKCS#1 RSA key.
    #[error("the server's RSA public key cannot be read")]
    Key,
    /// The password is too long for the key.
    #[error("RSA encryption failed")]
    Encrypt,
}

/// The request byte that asks the server for its public key.
pub const REQUEST_PUBLIC_KEY: u8 = 0x02;

/// Encrypts `password` for the server whose PEM key is `pem`, bound to
/// `nonce`.
pub fn encrypt_password(
    password: &[u8],
    nonce: &[u8],
    pem: &[u8],
) -> Result<Vec<u8>, RsaExchangeError> {
    let pem = std::str::from_utf8(pem).map_err(|_| RsaExchangeError::Key)?;
    let key = RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| {
            use rsa::pkcs1::DecodeRsaPublicKey;
            RsaPublicKey::from_pkcs1_pem(pem.trim())
        })
        .map_err(|_| RsaExchangeError::Key)?;
    let mut plain = Zeroizing::new(password.to_vec());
    plain.push(0);
    let masked = Zeroizing::new(xor(&plain, nonce));
    key.encrypt(&mut rand::rngs::OsRng, Oaep::new::<sha1::Sha1>(), &masked)
        .map_err(|_| RsaExchangeError::Encrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::{pkcs8::EncodePublicKey, RsaPrivateKey};

    #[test]
    fn the_server_recovers_the_password_xor_nonce() {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let pem = private
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let nonce = b"abcdefghijklmnopqrst";
        let sealed = encrypt_password(b"hunter2", nonce, pem.as_bytes()).unwrap();
        let opened = private.decrypt(Oaep::new::<sha1::Sha1>(), &sealed).unwrap();
        assert_eq!(xor(&opened, nonce), b"hunter2\0");
        assert!(matches!(
            encrypt_password(b"x", nonce, b"not a key"),
            Err(RsaExchangeError::Key)
        ));
    }
}
