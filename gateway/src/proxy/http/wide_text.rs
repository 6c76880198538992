//! Response bodies in UTF-16 or UTF-32, so masking reads them as the text
//! a client would decode.
//!
//! RFC 8259 §8.1 requires UTF-8 for JSON on the wire, but RFC 4627 §3
//! allowed UTF-16 and UTF-32 and told readers to detect them from the
//! pattern of NUL bytes in the first four octets; browsers and many JSON
//! libraries still decode them (by that pattern or a byte order mark).
//! An upstream could otherwise send a masked field in UTF-16, labelled
//! `text/plain`, past a reader that only looks for UTF-8.

/// A Unicode encoding wider than UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wide {
    Utf16Le,
    Utf16Be,
    Utf32Le,
    Utf32Be,
}

impl Wide {
    /// Every wide encoding, for reading a body that matches no pattern.
    pub const ALL: [Wide; 4] = [Wide::Utf16Le, Wide::Utf16Be, Wide::Utf32Le, Wide::Utf32Be];

    /// The encoding of `body` and the length in bytes of its byte order
    /// mark (0 when none): a UTF-16/32 byte order mark, or else the NUL
    /// pattern of RFC 4627 §3 in the first four bytes (`00 00 00 xx`
    /// UTF-32BE, `00 xx 00 xx` UTF-16BE, `xx 00 00 00` UTF-32LE, `xx 00 xx
    /// 00` UTF-16LE). `None` for anything else, UTF-8 included.
    pub fn detect(body: &[u8]) -> Option<(Wide, usize)> {
        match body {
            [0, 0, 0xFE, 0xFF, ..] => Some((Wide::Utf32Be, 4)),
            [0xFF, 0xFE, 0, 0, ..] => Some((Wide::Utf32Le, 4)),
            [0xFE, 0xFF, ..] => Some((Wide::Utf16Be, 2)),
            [0xFF, 0xFE, ..] => Some((Wide::Utf16Le, 2)),
            [0, 0, 0, a, ..] if *a != 0 => Some((Wide::Utf32Be, 0)),
            [0, a, 0, b, ..] if *a != 0 && *b != 0 => Some((Wide::Utf16Be, 0)),
            [a, 0, 0, 0, ..] if *a != 0 => Some((Wide::Utf32Le, 0)),
            [a, 0, b, 0, ..] if *a != 0 && *b != 0 => Some((Wide::Utf16Le, 0)),
            _ => None,
        }
    }

    /// The byte order mark of this encoding.
    pub fn bom(self) -> &'static [u8] {
        match self {
            Wide::Utf16Le => b"\xFF\xFE",
            Wide::Utf16Be => b"\xFE\xFF",
            Wide::Utf32Le => b"\xFF\xFE\0\0",
            Wide::Utf32Be => b"\0\0\xFE\xFF",
        }
    }

    /// `bytes` decoded; `None` when they are not valid in this encoding
    /// (a length that is not a whole number of code units, an unpaired
    /// surrogate, a code point above U+10FFFF).
    pub fn decode(self, bytes: &[u8]) -> Option<String> {
        let units = self.units(bytes);
        if !bytes.len().is_multiple_of(self.unit_len()) {
            return None;
        }
        self.chars(&units).collect()
    }

    /// `bytes` decoded with U+FFFD for what is not valid, as a lenient
    /// client would read them; trailing bytes short of a unit are dropped.
    pub fn decode_lossy(self, bytes: &[u8]) -> String {
        let units = self.units(bytes);
        self.chars(&units)
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }

    /// `text` in this encoding, without a byte order mark.
    pub fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Wide::Utf16Le => text.encode_utf16().flat_map(u16::to_le_bytes).collect(),
            Wide::Utf16Be => text.encode_utf16().flat_map(u16::to_be_bytes).collect(),
            Wide::Utf32Le => text
                .chars()
                .flat_map(|c| u32::from(c).to_le_bytes())
                .collect(),
            Wide::Utf32Be => text
                .chars()
                .flat_map(|c| u32::from(c).to_be_bytes())
                .collect(),
        }
    }

    fn unit_len(self) -> usize {
        match self {
            Wide::Utf16Le | Wide::Utf16Be => 2,
            Wide::Utf32Le | Wide::Utf32Be => 4,
        }
    }

    /// The code units of `bytes` (a trailing partial unit dropped).
    fn units(self, bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks_exact(self.unit_len())
            .map(|c| match (self, c) {
                (Wide::Utf16Le, [a, b]) => u32::from(u16::from_le_bytes([*a, *b])),
                (Wide::Utf16Be, [a, b]) => u32::from(u16::from_be_bytes([*a, *b])),
                (Wide::Utf32Le, [a, b, c, d]) => u32::from_le_bytes([*a, *b, *c, *d]),
                (_, [a, b, c, d]) => u32::from_be_bytes([*a, *b, *c, *d]),
                _ => unreachable!("chunks_exact yields whole units"),
            })
            .collect()
    }

    /// The characters of `units`; `None` for one that is not valid.
    fn chars<'a>(self, units: &'a [u32]) -> Box<dyn Iterator<Item = Option<char>> + 'a> {
        match self {
            Wide::Utf16Le | Wide::Utf16Be => {
                Box::new(char::decode_utf16(units.iter().map(|u| *u as u16)).map(Result::ok))
            }
            Wide::Utf32Le | Wide::Utf32Be => Box::new(units.iter().map(|u| char::from_u32(*u))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_byte_order_mark_and_rfc4627_pattern_and_round_trips() {
        let text = "{\"ssn\":\"é 𝄞\"}";
        for wide in Wide::ALL {
            let bare = wide.encode(text);
            assert_eq!(Wide::detect(&bare), Some((wide, 0)), "{wide:?}");
            let with_bom = [wide.bom(), &bare[..]].concat();
            assert_eq!(Wide::detect(&with_bom), Some((wide, wide.bom().len())));
            assert_eq!(wide.decode(&bare).as_deref(), Some(text));
            assert_eq!(wide.decode_lossy(&bare), text);
        }
        assert_eq!(Wide::detect(b"{\"ssn\":1}"), None);
        assert_eq!(Wide::detect(b"\xEF\xBB\xBF{}"), None);
        assert_eq!(Wide::detect(b"\0\0\0\0"), None);
    }

    #[test]
    fn invalid_units_fail_strictly_and_become_replacements_leniently() {
        let lone_surrogate = [0x00, 0xD8, b'a', 0];
        assert_eq!(Wide::Utf16Le.decode(&lone_surrogate), None);
        assert_eq!(Wide::Utf16Le.decode_lossy(&lone_surrogate), "\u{FFFD}a");
        assert_eq!(Wide::Utf16Le.decode(b"a\0b"), None);
        assert_eq!(Wide::Utf32Be.decode(&[0, 0x11, 0, 0]), None);
    }
}
