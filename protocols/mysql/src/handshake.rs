//! Connection phase packets (MySQL Internals, "Connection Phase Packets"):
//! the server's `Protocol::HandshakeV10`, the client's `SSLRequest` and
//! `HandshakeResponse41`, and the authentication exchange packets
//! `AuthSwitchRequest` and `AuthMoreData`.
use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    capability::Capabilities,
    wire::{put_lenenc_bytes, put_nul_bytes, Malformed, Reader},
};

/// `utf8mb4_general_ci`, the collation Sluice announces and asks for.
pub const UTF8MB4_GENERAL_CI: u8 = 45;
/// `SERVER_STATUS_AUTOCOMMIT`.
pub const STATUS_AUTOCOMMIT: u16 = 0x0002;

/// `Protocol::HandshakeV10`, the server's first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialHandshake {
    /// Human-readable server version, e.g. `10.11.6-MariaDB`.
    pub server_version: Vec<u8>,
    /// The connection (thread) id, the target of `KILL QUERY`.
    pub connection_id: u32,
    /// The authentication nonce (20 bytes for the built-in plugins).
    pub nonce: Vec<u8>,
    /// What the server supports.
    pub capabilities: Capabilities,
    /// The server's default collation.
    pub charset: u8,
    /// `SERVER_STATUS_*` flags.
    pub status: u16,
    /// The plugin the nonce is meant for, e.g. `mysql_native_password`.
    pub auth_plugin: Vec<u8>,
}

impl InitialHandshake {
    /// Parses a HandshakeV10 payload; other protocol versions are refused.
    pub fn decode(payload: &[u8]) -> Result<InitialHandshake, Malformed> {
        let mut r = Reader::new(payload);
        if r.u8("protocol version")? != 10 {
            return Err(Malformed("protocol version is not 10"));
        }
        let server_version = r.nul_bytes("server version")?.to_vec();
        let connection_id = r.u32("connection id")?;
        let mut nonce = r.bytes(8, "auth plugin data")?.to_vec();
        r.u8("filler")?;
        let mut caps = u32::from(r.u16("capabilities")?);
        let mut hs = InitialHandshake {
            server_version,
            connection_id,
            nonce: Vec::new(),
            capabilities: Capabilities(caps),
            charset: 0,
            status: 0,
            auth_plugin: Vec::new(),
        };
        if r.is_empty() {
            hs.nonce = nonce;
            return Ok(hs);
        }
        hs.charset = r.u8("charset")?;
        hs.status = r.u16("status")?;
        caps |= u32::from(r.u16("capabilities")?) << 16;
        hs.capabilities = Capabilities(caps);
        let data_len = usize::from(r.u8("auth plugin data length")?);
        r.bytes(10, "reserved")?;
        if hs.capabilities.contains(Capabilities::SECURE_CONNECTION) {
            let n = data_len.saturating_sub(8).max(13);
            let part2 = r.bytes(n.min(r.rest().len()), "auth plugin data")?;
            // The part ends with a NUL that is not part of the nonce.
            let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
            nonce.extend_from_slice(part2);
        }
        hs.nonce = nonce;
        if hs.capabilities.contains(Capabilities::PLUGIN_AUTH) {
            hs.auth_plugin = r.nul_bytes_or_rest().to_vec();
        }
        Ok(hs)
    }

    /// The HandshakeV10 payload, with the nonce split as the spec says
    /// (8 bytes, then the rest NUL-terminated).
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(96);
        out.put_u8(10);
        put_nul_bytes(&mut out, &self.server_version);
        out.put_u32_le(self.connection_id);
        let split = self.nonce.len().min(8);
        out.put_slice(&self.nonce[..split]);
        out.put_bytes(0, 8 - split);
        out.put_u8(0);
        out.put_u16_le(self.capabilities.0 as u16);
        out.put_u8(self.charset);
        out.put_u16_le(self.status);
        out.put_u16_le((self.capabilities.0 >> 16) as u16);
        out.put_u8((self.nonce.len() + 1) as u8);
        out.put_bytes(0, 10);
        let part2 = &self.nonce[split..];
        out.put_slice(part2);
        out.put_bytes(0, 13usize.saturating_sub(part2.len()).max(1));
        put_nul_bytes(&mut out, &self.auth_plugin);
        out
    }
}

/// The 32 bytes shared by `SSLRequest` and `HandshakeResponse41`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHeader {
    /// What the client asks for.
    pub capabilities: Capabilities,
    /// The largest packet the client will send.
    pub max_packet: u32,
    /// The collation the client asks for.
    pub charset: u8,
}

impl ClientHeader {
    fn decode(r: &mut Reader<'_>) -> Result<ClientHeader, Malformed> {
        let capabilities = Capabilities(r.u32("capabilities")?);
        if !capabilities.contains(Capabilities::PROTOCOL_41) {
            return Err(Malformed("client does not speak protocol 4.1"));
        }
        let max_packet = r.u32("max packet")?;
        let charset = r.u8("charset")?;
        r.bytes(23, "filler")?;
        Ok(ClientHeader {
            capabilities,
            max_packet,
            charset,
        })
    }

    fn encode(&self, out: &mut BytesMut) {
        out.put_u32_le(self.capabilities.0);
        out.put_u32_le(self.max_packet);
        out.put_u8(self.charset);
        out.put_bytes(0, 23);
    }

    /// An `SSLRequest` payload: this header alone (32 bytes), with
    /// `CLIENT_SSL` set.
    pub fn encode_ssl_request(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(32);
        let mut h = *self;
        h.capabilities = h.capabilities | Capabilities::SSL;
        h.encode(&mut out);
        out
    }
}

/// What a client sent after the server's handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// `SSLRequest`: switch to TLS, then the real response follows.
    SslRequest(ClientHeader),
    /// `HandshakeResponse41`.
    Response(HandshakeResponse),
}

impl ClientHello {
    /// Parses the client's reply to the handshake: an `SSLRequest` is
    /// exactly 32 bytes with `CLIENT_SSL` set.
    pub fn decode(payload: &[u8]) -> Result<ClientHello, Malformed> {
        let mut r = Reader::new(payload);
        let header = ClientHeader::decode(&mut r)?;
        if r.is_empty() && header.capabilities.contains(Capabilities::SSL) {
            return Ok(ClientHello::SslRequest(header));
        }
        HandshakeResponse::decode_after(header, &mut r).map(ClientHello::Response)
    }
}

/// `HandshakeResponse41`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// Capabilities, max packet and collation.
    pub header: ClientHeader,
    /// The login name.
    pub user: Vec<u8>,
    /// The plugin's answer to the nonce.
    pub auth_response: Vec<u8>,
    /// The initial database (`CLIENT_CONNECT_WITH_DB`).
    pub database: Option<Vec<u8>>,
    /// The plugin the answer was made with (`CLIENT_PLUGIN_AUTH`).
    pub auth_plugin: Option<Vec<u8>>,
    /// Connection attributes, key/value (`CLIENT_CONNECT_ATTRS`).
    pub attributes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HandshakeResponse {
    /// Parses a `HandshakeResponse41` payload.
    pub fn decode(payload: &[u8]) -> Result<HandshakeResponse, Malformed> {
        let mut r = Reader::new(payload);
        let header = ClientHeader::decode(&mut r)?;
        HandshakeResponse::decode_after(header, &mut r)
    }

    fn decode_after(
        header: ClientHeader,
        r: &mut Reader<'_>,
    ) -> Result<HandshakeResponse, Malformed> {
        let caps = header.capabilities;
        let user = r.nul_bytes("user")?.to_vec();
        let auth_response = if caps.contains(Capabilities::PLUGIN_AUTH_LENENC_CLIENT_DATA) {
            r.lenenc_bytes("auth response")?
                .ok_or(Malformed("auth response"))?
                .to_vec()
        } else if caps.contains(Capabilities::SECURE_CONNECTION) {
            let n = usize::from(r.u8("auth response length")?);
            r.bytes(n, "auth response")?.to_vec()
        } else {
            r.nul_bytes("auth response")?.to_vec()
        };
        let database = if caps.contains(Capabilities::CONNECT_WITH_DB) && !r.is_empty() {
            Some(r.nul_bytes_or_rest().to_vec())
        } else {
            None
        };
        let auth_plugin = if caps.contains(Capabilities::PLUGIN_AUTH) && !r.is_empty() {
            Some(r.nul_bytes_or_rest().to_vec())
        } else {
            None
        };
        let mut attributes = Vec::new();
        if caps.contains(Capabilities::CONNECT_ATTRS) && !r.is_empty() {
            let all = r.lenenc_bytes("attributes")?.unwrap_or_default();
            let mut a = Reader::new(all);
            while !a.is_empty() {
                let k = a.lenenc_bytes("attribute key")?.unwrap_or_default();
                let v = a.lenenc_bytes("attribute value")?.unwrap_or_default();
                attributes.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(HandshakeResponse {
            header,
            user,
            auth_response,
            database,
            auth_plugin,
            attributes,
        })
    }

    /// The payload, laid out by the header's capabilities.
    pub fn encode(&self) -> BytesMut {
        let caps = self.header.capabilities;
        let mut out = BytesMut::with_capacity(128);
        self.header.encode(&mut out);
        put_nul_bytes(&mut out, &self.user);
        if caps.contains(Capabilities::PLUGIN_AUTH_LENENC_CLIENT_DATA) {
            put_lenenc_bytes(&mut out, &self.auth_response);
        } else if caps.contains(Capabilities::SECURE_CONNECTION) {
            // A 1-byte length: longer answers need the lenenc capability.
            let n = self.auth_response.len().min(255);
            out.put_u8(n as u8);
            out.put_slice(&self.auth_response[..n]);
        } else {
            put_nul_bytes(&mut out, &self.auth_response);
        }
        if caps.contains(Capabilities::CONNECT_WITH_DB) {
            put_nul_bytes(&mut out, self.database.as_deref().unwrap_or_default());
        }
        if caps.contains(Capabilities::PLUGIN_AUTH) {
            put_nul_bytes(&mut out, self.auth_plugin.as_deref().unwrap_or_default());
        }
        if caps.contains(Capabilities::CONNECT_ATTRS) {
            let mut attrs = BytesMut::new();
            for (k, v) in &self.attributes {
                put_lenenc_bytes(&mut attrs, k);
                put_lenenc_bytes(&mut attrs, v);
            }
            put_lenenc_bytes(&mut out, &attrs);
        }
        out
    }
}

/// A server's packet during authentication, after the client's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPacket {
    /// `0x00`: authenticated (an OK packet, payload kept whole).
    Ok(Bytes),
    /// `0xFF`: refused (an ERR packet, payload kept whole).
    Err(Bytes),
    /// `0xFE` `AuthSwitchRequest`: use `plugin` with this data, as sent
    /// (the built-in plugins' nonce ends with a NUL terminator, see
    /// [`crate::auth::Plugin::nonce`]; `client_ed25519`'s 32 bytes do not).
    Switch { plugin: Vec<u8>, data: Vec<u8> },
    /// `0x01` `AuthMoreData`: plugin-specific data.
    MoreData(Vec<u8>),
}

impl AuthPacket {
    /// Sorts a server packet of the authentication phase by its first byte.
    pub fn decode(payload: Bytes) -> Result<AuthPacket, Malformed> {
        match payload.first() {
            Some(0x00) => Ok(AuthPacket::Ok(payload)),
            Some(0xFF) => Ok(AuthPacket::Err(payload)),
            Some(0xFE) => {
                let mut r = Reader::new(&payload[1..]);
                let plugin = r.nul_bytes_or_rest().to_vec();
                let data = r.take_rest().to_vec();
                Ok(AuthPacket::Switch { plugin, data })
            }
            Some(0x01) => Ok(AuthPacket::MoreData(payload[1..].to_vec())),
            _ => Err(Malformed("unexpected packet during authentication")),
        }
    }

    /// The payload of an `AuthSwitchRequest` or `AuthMoreData`; OK and ERR
    /// as kept.
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::new();
        match self {
            AuthPacket::Ok(p) | AuthPacket::Err(p) => out.put_slice(p),
            AuthPacket::Switch { plugin, data } => {
                out.put_u8(0xFE);
                put_nul_bytes(&mut out, plugin);
                out.put_slice(data);
            }
            AuthPacket::MoreData(d) => {
                out.put_u8(0x01);
                out.put_slice(d);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InitialHandshake {
        InitialHandshake {
            server_version: b"8.0.36-sluice".to_vec(),
            connection_id: 77,
            nonce: (1..=20).collect(),
            capabilities: Capabilities::UPSTREAM | Capabilities::SSL,
            charset: UTF8MB4_GENERAL_CI,
            status: STATUS_AUTOCOMMIT,
            auth_plugin: b"caching_sha2_password".to_vec(),
        }
    }

    #[test]
    fn initial_handshake_round_trips() {
        let hs = sample();
        assert_eq!(InitialHandshake::decode(&hs.encode()).unwrap(), hs);
    }

    #[test]
    fn handshake_response_and_ssl_request_round_trip() {
        let header = ClientHeader {
            capabilities: Capabilities::UPSTREAM | Capabilities::CONNECT_ATTRS,
            max_packet: 1 << 24,
            charset: UTF8MB4_GENERAL_CI,
        };
        let resp = HandshakeResponse {
            header,
            user: b"orders".to_vec(),
            auth_response: vec![9; 20],
            database: Some(b"shop".to_vec()),
            auth_plugin: Some(b"mysql_native_password".to_vec()),
            attributes: vec![(b"_client_name".to_vec(), b"sluice".to_vec())],
        };
        assert_eq!(
            ClientHello::decode(&resp.encode()).unwrap(),
            ClientHello::Response(resp)
        );
        let ssl = header.encode_ssl_request();
        assert_eq!(ssl.len(), 32);
        assert!(
            matches!(ClientHello::decode(&ssl).unwrap(), ClientHello::SslRequest(h) if h.capabilities.contains(Capabilities::SSL))
        );
    }

    #[test]
    fn truncated_packets_are_malformed_not_panics() {
        let full = sample().encode();
        for n in 0..full.len() {
            let _ = InitialHandshake::decode(&full[..n]);
            let _ = ClientHello::decode(&full[..n]);
        }
    }

    #[test]
    fn auth_switch_round_trips() {
        let p = AuthPacket::Switch {
            plugin: b"client_ed25519".to_vec(),
            data: vec![0; 32],
        };
        assert_eq!(AuthPacket::decode(p.encode().freeze()).unwrap(), p);
    }
}
