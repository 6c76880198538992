//! Capability flags (MySQL Internals, "Capability Flags"): what client and
//! server each say they support in the handshake; the connection uses
//! their intersection.
use std::ops::{BitAnd, BitOr};

/// A set of `CLIENT_*` capability flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities(pub u32);

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr;)*) => {
        impl Capabilities {
            $($(#[$doc])* pub const $name: Capabilities = Capabilities($bit);)*
        }
    };
}

flags! {
    /// `CLIENT_LONG_PASSWORD`; MariaDB reads its absence as "MariaDB extended capabilities".
    LONG_PASSWORD = 1;
    /// `CLIENT_FOUND_ROWS`.
    FOUND_ROWS = 1 << 1;
    /// `CLIENT_LONG_FLAG`.
    LONG_FLAG = 1 << 2;
    /// `CLIENT_CONNECT_WITH_DB`: the handshake response names a database.
    CONNECT_WITH_DB = 1 << 3;
    /// `CLIENT_COMPRESS`: never offered by Sluice.
    COMPRESS = 1 << 5;
    /// `CLIENT_LOCAL_FILES`: lets the server ask the client for a file
    /// (`LOAD DATA LOCAL INFILE`); never offered upstream.
    LOCAL_FILES = 1 << 7;
    /// `CLIENT_PROTOCOL_41`.
    PROTOCOL_41 = 1 << 9;
    /// `CLIENT_INTERACTIVE`.
    INTERACTIVE = 1 << 10;
    /// `CLIENT_SSL`: switch to TLS after the SSLRequest.
    SSL = 1 << 11;
    /// `CLIENT_TRANSACTIONS`.
    TRANSACTIONS = 1 << 13;
    /// `CLIENT_SECURE_CONNECTION`: 1-byte length before the auth response.
    SECURE_CONNECTION = 1 << 15;
    /// `CLIENT_MULTI_STATEMENTS`.
    MULTI_STATEMENTS = 1 << 16;
    /// `CLIENT_MULTI_RESULTS`.
    MULTI_RESULTS = 1 << 17;
    /// `CLIENT_PS_MULTI_RESULTS`.
    PS_MULTI_RESULTS = 1 << 18;
    /// `CLIENT_PLUGIN_AUTH`: authentication plugins by name.
    PLUGIN_AUTH = 1 << 19;
    /// `CLIENT_CONNECT_ATTRS`.
    CONNECT_ATTRS = 1 << 20;
    /// `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`.
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21;
    /// `CLIENT_SESSION_TRACK`.
    SESSION_TRACK = 1 << 23;
    /// `CLIENT_DEPRECATE_EOF`: OK packets (0xFE) instead of EOF packets.
    DEPRECATE_EOF = 1 << 24;
}

impl Capabilities {
    /// What Sluice asks of an upstream server (before intersecting with
    /// what the server offers): never `LOCAL_FILES`, never `COMPRESS`.
    pub const UPSTREAM: Capabilities = Capabilities(
        Self::LONG_PASSWORD.0
            | Self::FOUND_ROWS.0
            | Self::LONG_FLAG.0
            | Self::CONNECT_WITH_DB.0
            | Self::PROTOCOL_41.0
            | Self::TRANSACTIONS.0
            | Self::SECURE_CONNECTION.0
            | Self::MULTI_STATEMENTS.0
            | Self::MULTI_RESULTS.0
            | Self::PS_MULTI_RESULTS.0
            | Self::PLUGIN_AUTH.0
            | Self::PLUGIN_AUTH_LENENC_CLIENT_DATA.0,
    );

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` without the flags of `other`.
    pub fn without(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & !other.0)
    }
}

impl BitOr for Capabilities {
    type Output = Capabilities;
    fn bitor(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 | rhs.0)
    }
}

impl BitAnd for Capabilities {
    type Output = Capabilities;
    fn bitand(self, rhs: Capabilities) -> Capabilities {
        Capabilities(self.0 & rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_never_offers_local_files_or_compression() {
        assert!(!Capabilities::UPSTREAM.contains(Capabilities::LOCAL_FILES));
        assert!(!Capabilities::UPSTREAM.contains(Capabilities::COMPRESS));
        assert!(
            Capabilities::UPSTREAM.contains(Capabilities::PROTOCOL_41 | Capabilities::PLUGIN_AUTH)
        );
    }
}
