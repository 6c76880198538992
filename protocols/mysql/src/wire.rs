//! Basic data types of the MySQL client/server protocol: fixed-length
//! little-endian integers, length-encoded integers and strings,
//! NUL-terminated strings (MySQL Internals, "Basic Data Types").
//!
//! [`Reader`] reads them from a payload without copying; [`put_lenenc_int`]
//! and friends append them to a `BytesMut`.
use bytes::{BufMut, BytesMut};

/// A payload ended before a field it should hold, or a field is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed MySQL packet: {0}")]
pub struct Malformed(pub &'static str);

/// A cursor over one packet payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Every remaining byte (`string<EOF>`).
    pub fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// `int<1>`.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, Malformed> {
        Ok(self.bytes(1, what)?[0])
    }

    /// `int<2>`, little endian.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, Malformed> {
        Ok(self.uint(2, what)? as u16)
    }

    /// `int<4>`, little endian.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, Malformed> {
        Ok(self.uint(4, what)? as u32)
    }

    /// `int<n>` for n ≤ 8, little endian.
    pub fn uint(&mut self, n: usize, what: &'static str) -> Result<u64, Malformed> {
        let b = self.bytes(n, what)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    /// `int<lenenc>`; `None` for the NULL marker `0xFB` (text result rows).
    pub fn lenenc_int(&mut self, what: &'static str) -> Result<Option<u64>, Malformed> {
        match self.u8(what)? {
            0xFB => Ok(None),
            0xFC => self.uint(2, what).map(Some),
            0xFD => self.uint(3, what).map(Some),
            0xFE => self.uint(8, what).map(Some),
            0xFF => Err(Malformed(what)),
            n => Ok(Some(u64::from(n))),
        }
    }

    /// `string<lenenc>`; `None` for NULL.
    pub fn lenenc_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, Malformed> {
        match self.lenenc_int(what)? {
            None => Ok(None),
            Some(n) => {
                let n = usize::try_from(n).map_err(|_| Malformed(what))?;
                self.bytes(n, what).map(Some)
            }
        }
    }

    /// `string<NUL>`: the bytes up to the next NUL, which is consumed.
    pub fn nul_bytes(&mut self, what: &'static str) -> Result<&'a [u8], Malformed> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(Malformed(what))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// `string<NUL>` where the NUL may be missing at the end of the payload
    /// (some servers and clients omit the last terminator).
    pub fn nul_bytes_or_rest(&mut self) -> &'a [u8] {
        match self.buf.iter().position(|&b| b == 0) {
            Some(end) => {
                let s = &self.buf[..end];
                self.buf = &self.buf[end + 1..];
                s
            }
            None => self.take_rest(),
        }
    }
}

/// Appends `int<lenenc>`.
pub fn put_lenenc_int(out: &mut BytesMut, n: u64) {
    match n {
        0..=250 => out.put_u8(n as u8),
        251..=0xFFFF => {
            out.put_u8(0xFC);
            out.put_u16_le(n as u16);
        }
        0x1_0000..=0xFF_FFFF => {
            out.put_u8(0xFD);
            out.put_uint_le(n, 3);
        }
        _ => {
            out.put_u8(0xFE);
            out.put_u64_le(n);
        }
    }
}

/// Appends `string<lenenc>`.
pub fn put_lenenc_bytes(out: &mut BytesMut, b: &[u8]) {
    put_lenenc_int(out, b.len() as u64);
    out.put_slice(b);
}

/// Appends `string<NUL>`.
pub fn put_nul_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_slice(b);
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_ints_round_trip_at_every_width() {
        for n in [
            0u64,
            250,
            251,
            0xFFFF,
            0x1_0000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            put_lenenc_int(&mut out, n);
            let mut r = Reader::new(&out);
            assert_eq!(r.lenenc_int("n").unwrap(), Some(n));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn null_marker_and_truncation() {
        assert_eq!(Reader::new(&[0xFB]).lenenc_int("n").unwrap(), None);
        assert!(Reader::new(&[0xFC, 1]).lenenc_int("n").is_err());
        assert!(Reader::new(&[0xFF]).lenenc_int("n").is_err());
        assert!(Reader::new(&[3, b'a']).lenenc_bytes("s").is_err());
        assert!(Reader::new(b"abc").nul_bytes("s").is_err());
    }
}
