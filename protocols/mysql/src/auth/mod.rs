//! Authentication plugins: the client's computations (what Sluice sends
//! upstream with the vault secret) in [`scramble`], the stored verifiers and
//! the server side (what Sluice checks of an agent's token) in [`verifier`]
//! and [`server`], and the RSA key exchange of `caching_sha2_password` in
//! [`rsa_exchange`].
pub mod rsa_exchange;
pub mod scramble;
pub mod server;
pub mod verifier;

use rand::RngCore;

/// The length of the nonce of the built-in plugins, in bytes.
pub const NONCE_LEN: usize = 20;

/// An authentication plugin known to Sluice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// `mysql_native_password`: SHA-1 challenge-response.
    MysqlNativePassword,
    /// `caching_sha2_password`: SHA-256 challenge-response (fast path), or
    /// the password over TLS / RSA-encrypted (full authentication).
    CachingSha2Password,
    /// MariaDB `client_ed25519`: an Ed25519 signature of the nonce with a
    /// key derived from the password.
    ClientEd25519,
    /// `mysql_clear_password`: the password itself.
    MysqlClearPassword,
}

impl Plugin {
    /// The plugin's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::MysqlNativePassword => "mysql_native_password",
            Plugin::CachingSha2Password => "caching_sha2_password",
            Plugin::ClientEd25519 => "client_ed25519",
            Plugin::MysqlClearPassword => "mysql_clear_password",
        }
    }

    /// The nonce in an `AuthSwitchRequest`'s `data` for this plugin: the
    /// built-in plugins' 20 bytes are sent NUL-terminated, which is not
    /// part of the nonce; `client_ed25519`'s 32 bytes are sent as they are
    /// (and may end with a zero byte).
    pub fn nonce(self, data: &[u8]) -> &[u8] {
        match self {
            Plugin::ClientEd25519 => data,
            _ if data.len() == NONCE_LEN + 1 => &data[..NONCE_LEN],
            _ => data,
        }
    }

    /// The plugin named `name`, if Sluice knows it.
    pub fn from_name(name: &[u8]) -> Option<Plugin> {
        [
            Plugin::MysqlNativePassword,
            Plugin::CachingSha2Password,
            Plugin::ClientEd25519,
            Plugin::MysqlClearPassword,
        ]
        .into_iter()
        .find(|p| p.name().as_bytes() == name)
    }
}

/// A fresh 20-byte nonce from the OS RNG, printable ASCII without `$`
/// and NUL as MySQL servers make them (clients strip a trailing NUL).
pub fn new_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    for b in &mut nonce {
        // 0x21..=0x7E without '$': 93 values; the bias is irrelevant for a
        // challenge that only has to be unpredictable.
        let c = 0x21 + (*b % 93);
        *b = if c >= b'$' { c + 1 } else { c };
        if *b > 0x7E {
            *b = b'~';
        }
    }
    nonce
}
