//! Generic response packets (MySQL Internals, "Generic Response Packets"):
//! `OK_Packet`, `ERR_Packet` and `EOF_Packet`.
use bytes::{BufMut, BytesMut};

use crate::{
    capability::Capabilities,
    wire::{put_lenenc_int, Malformed, Reader},
};

/// `OK_Packet` (header `0x00`; `0xFE` when it ends a result set under
/// `CLIENT_DEPRECATE_EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OkPacket {
    /// Rows changed by the statement.
    pub affected_rows: u64,
    /// The last `AUTO_INCREMENT` value.
    pub last_insert_id: u64,
    /// `SERVER_STATUS_*` flags.
    pub status: u16,
    /// Warning count.
    pub warnings: u16,
    /// Human-readable information and session-state data, as sent.
    pub info: Vec<u8>,
}

impl OkPacket {
    /// Parses an OK payload (protocol 4.1), header `0x00` or `0xFE`.
    pub fn decode(payload: &[u8]) -> Result<OkPacket, Malformed> {
        let mut r = Reader::new(payload);
        if !matches!(r.u8("header")?, 0x00 | 0xFE) {
            return Err(Malformed("not an OK packet"));
        }
        Ok(OkPacket {
            affected_rows: r
                .lenenc_int("affected rows")?
                .ok_or(Malformed("affected rows"))?,
            last_insert_id: r
                .lenenc_int("last insert id")?
                .ok_or(Malformed("last insert id"))?,
            status: r.u16("status")?,
            warnings: r.u16("warnings")?,
            info: r.take_rest().to_vec(),
        })
    }

    /// The payload with header `0x00`.
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(16 + self.info.len());
        out.put_u8(0x00);
        put_lenenc_int(&mut out, self.affected_rows);
        put_lenenc_int(&mut out, self.last_insert_id);
        out.put_u16_le(self.status);
        out.put_u16_le(self.warnings);
        out.put_slice(&self.info);
        out
    }
}

/// `ERR_Packet` (header `0xFF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    /// The error number, e.g. 1045 (`ER_ACCESS_DENIED_ERROR`).
    pub code: u16,
    /// The SQLSTATE after the `#` marker, e.g. `28000`; servers may omit it
    /// before capabilities are agreed.
    pub sql_state: Option<[u8; 5]>,
    /// The message.
    pub message: String,
}

impl ErrPacket {
    /// `ER_ACCESS_DENIED_ERROR` 1045 / `28000`: a bad, expired or revoked token.
    pub fn access_denied(message: impl Into<String>) -> ErrPacket {
        ErrPacket::new(1045, b"28000", message)
    }

    /// `ER_SPECIFIC_ACCESS_DENIED_ERROR` 1227 / `42000`: a policy refusal.
    pub fn policy_denied(message: impl Into<String>) -> ErrPacket {
        ErrPacket::new(1227, b"42000", message)
    }

    /// `ER_UNKNOWN_ERROR` 1105 / `HY000`, e.g. an unreachable upstream.
    pub fn unknown(message: impl Into<String>) -> ErrPacket {
        ErrPacket::new(1105, b"HY000", message)
    }

    /// An error with `code`, SQLSTATE `state` and `message`.
    pub fn new(code: u16, state: &[u8; 5], message: impl Into<String>) -> ErrPacket {
        ErrPacket {
            code,
            sql_state: Some(*state),
            message: message.into(),
        }
    }

    /// Parses an ERR payload.
    pub fn decode(payload: &[u8]) -> Result<ErrPacket, Malformed> {
        let mut r = Reader::new(payload);
        if r.u8("header")? != 0xFF {
            return Err(Malformed("not an ERR packet"));
        }
        let code = r.u16("error code")?;
        let sql_state = if r.rest().first() == Some(&b'#') {
            r.u8("marker")?;
            let s = r.bytes(5, "sqlstate")?;
            Some([s[0], s[1], s[2], s[3], s[4]])
        } else {
            None
        };
        Ok(ErrPacket {
            code,
            sql_state,
            message: String::from_utf8_lossy(r.take_rest()).into_owned(),
        })
    }

    /// The payload; the `#` marker and SQLSTATE when there is one.
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(9 + self.message.len());
        out.put_u8(0xFF);
        out.put_u16_le(self.code);
        if let Some(state) = &self.sql_state {
            out.put_u8(b'#');
            out.put_slice(state);
        }
        out.put_slice(self.message.as_bytes());
        out
    }
}

impl std::fmt::Display for ErrPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ERROR {}", self.code)?;
        if let Some(s) = &self.sql_state {
            write!(f, " ({})", String::from_utf8_lossy(s))?;
        }
        write!(f, ": {}", self.message)
    }
}

/// `EOF_Packet` (header `0xFE`, payload shorter than 9 bytes): the end of
/// column definitions or rows without `CLIENT_DEPRECATE_EOF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EofPacket {
    /// Warning count.
    pub warnings: u16,
    /// `SERVER_STATUS_*` flags.
    pub status: u16,
}

impl EofPacket {
    /// Whether `payload` is an EOF packet, as opposed to a row that starts
    /// with `0xFE` (a length-encoded integer of 8 bytes is longer).
    pub fn is_eof(payload: &[u8]) -> bool {
        payload.first() == Some(&0xFE) && payload.len() < 9
    }

    /// Parses an EOF payload.
    pub fn decode(payload: &[u8]) -> Result<EofPacket, Malformed> {
        if !EofPacket::is_eof(payload) {
            return Err(Malformed("not an EOF packet"));
        }
        let mut r = Reader::new(&payload[1..]);
        Ok(EofPacket {
            warnings: r.u16("warnings")?,
            status: r.u16("status")?,
        })
    }

    /// The payload.
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(5);
        out.put_u8(0xFE);
        out.put_u16_le(self.warnings);
        out.put_u16_le(self.status);
        out
    }
}

/// Whether a server's `capabilities` end result sets with OK instead of EOF.
pub fn deprecates_eof(capabilities: Capabilities) -> bool {
    capabilities.contains(Capabilities::DEPRECATE_EOF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_packet_carries_the_sqlstate_marker() {
        let e = ErrPacket::policy_denied("denied by rule DROP");
        let wire = e.encode();
        assert_eq!(&wire[..9], b"\xFF\xCB\x04#42000");
        assert_eq!(ErrPacket::decode(&wire).unwrap(), e);
        let bare = ErrPacket::decode(b"\xFF\x15\x04Access denied").unwrap();
        assert_eq!((bare.code, bare.sql_state), (1045, None));
    }

    #[test]
    fn ok_and_eof_round_trip() {
        let ok = OkPacket {
            affected_rows: 300,
            last_insert_id: 7,
            status: 2,
            warnings: 1,
            info: b"Rows matched".to_vec(),
        };
        assert_eq!(OkPacket::decode(&ok.encode()).unwrap(), ok);
        let eof = EofPacket {
            warnings: 0,
            status: 34,
        };
        assert_eq!(EofPacket::decode(&eof.encode()).unwrap(), eof);
        assert!(!EofPacket::is_eof(&[0xFE, 0, 0, 0, 0, 0, 0, 0, 0]));
    }
}
