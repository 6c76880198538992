//! Result-set rows for masking by column name (MySQL Internals, "Text
//! Resultset", "Binary Protocol Resultset", "Column Definition"):
//! `ColumnDefinition41`, text rows (`string<lenenc>` per column, `0xFB`
//! for NULL) and binary rows (header `0x00`, NULL bitmap with offset 2,
//! then each non-NULL value in its type's encoding).
//!
//! A masked value becomes the string `****`; NULL stays NULL; length
//! prefixes are rebuilt. In binary rows the masked column's definition is
//! rewritten to `MYSQL_TYPE_VAR_STRING` ([`ColumnDefinition::masked`]), so
//! the client reads the mask as the string it is, whatever the column's
//! type was. A column is masked when its name or its original name
//! (`org_name`, the table column behind an alias) is a `mask` name.
use bytes::{BufMut, BytesMut};

use crate::{
    handshake::UTF8MB4_GENERAL_CI,
    wire::{put_lenenc_bytes, put_lenenc_int, Malformed, Reader},
};

/// What a masked value becomes.
pub const MASKED_TEXT: &[u8] = b"****";
/// `MYSQL_TYPE_VAR_STRING`.
pub const TYPE_VAR_STRING: u8 = 0xFD;

/// `ColumnDefinition41`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDefinition {
    /// Always `def`.
    pub catalog: Vec<u8>,
    /// Database.
    pub schema: Vec<u8>,
    /// Table alias.
    pub table: Vec<u8>,
    /// Table.
    pub org_table: Vec<u8>,
    /// Column alias (what the client shows).
    pub name: Vec<u8>,
    /// The table column behind it; empty for an expression.
    pub org_name: Vec<u8>,
    /// Collation id.
    pub charset: u16,
    /// Maximum display length.
    pub length: u32,
    /// `MYSQL_TYPE_*`.
    pub column_type: u8,
    /// Column flags.
    pub flags: u16,
    /// Decimal digits.
    pub decimals: u8,
}

impl ColumnDefinition {
    /// Parses a `ColumnDefinition41` payload.
    pub fn decode(payload: &[u8]) -> Result<ColumnDefinition, Malformed> {
        let mut r = Reader::new(payload);
        let mut s = |what| -> Result<Vec<u8>, Malformed> {
            Ok(r.lenenc_bytes(what)?.ok_or(Malformed(what))?.to_vec())
        };
        let (catalog, schema, table, org_table, name, org_name) = (
            s("catalog")?,
            s("schema")?,
            s("table")?,
            s("org_table")?,
            s("name")?,
            s("org_name")?,
        );
        if r.lenenc_int("fixed length")? != Some(0x0C) {
            return Err(Malformed("column definition fixed length"));
        }
        Ok(ColumnDefinition {
            catalog,
            schema,
            table,
            org_table,
            name,
            org_name,
            charset: r.u16("charset")?,
            length: r.u32("column length")?,
            column_type: r.u8("column type")?,
            flags: r.u16("flags")?,
            decimals: r.u8("decimals")?,
        })
    }

    /// The payload.
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(64);
        for s in [
            &self.catalog,
            &self.schema,
            &self.table,
            &self.org_table,
            &self.name,
            &self.org_name,
        ] {
            put_lenenc_bytes(&mut out, s);
        }
        put_lenenc_int(&mut out, 0x0C);
        out.put_u16_le(self.charset);
        out.put_u32_le(self.length);
        out.put_u8(self.column_type);
        out.put_u16_le(self.flags);
        out.put_u8(self.decimals);
        out.put_u16_le(0);
        out
    }

    /// Whether `mask` (column names, case-insensitive) covers this column
    /// by its name or its original name.
    pub fn is_masked_by(&self, mask: &[String]) -> bool {
        mask.iter().any(|m| {
            m.as_bytes().eq_ignore_ascii_case(&self.name)
                || m.as_bytes().eq_ignore_ascii_case(&self.org_name)
        })
    }

    /// The definition of the masked column: a `utf8mb4` `VAR_STRING`,
    /// names kept, flags other than `NOT_NULL` cleared.
    pub fn masked(&self) -> ColumnDefinition {
        ColumnDefinition {
            charset: u16::from(UTF8MB4_GENERAL_CI),
            length: self.length.max(MASKED_TEXT.len() as u32 * 4),
            column_type: TYPE_VAR_STRING,
            flags: self.flags & 0x0001,
            decimals: 0,
            ..self.clone()
        }
    }
}

/// A text-protocol row with the `masked` columns replaced.
pub fn mask_text_row(row: &[u8], masked: &[bool]) -> Result<BytesMut, Malformed> {
    let mut r = Reader::new(row);
    let mut out = BytesMut::with_capacity(row.len());
    for &m in masked {
        match r.lenenc_bytes("text row value")? {
            None => out.put_u8(0xFB),
            Some(_) if m => put_lenenc_bytes(&mut out, MASKED_TEXT),
            Some(v) => put_lenenc_bytes(&mut out, v),
        }
    }
    if !r.is_empty() {
        return Err(Malformed("text row longer than its columns"));
    }
    Ok(out)
}

/// A binary-protocol row (of a result whose column types are `types`)
/// with the `masked` columns replaced by [`MASKED_TEXT`] as a lenenc string.
pub fn mask_binary_row(row: &[u8], types: &[u8], masked: &[bool]) -> Result<BytesMut, Malformed> {
    if types.len() != masked.len() {
        return Err(Malformed("binary row: column count"));
    }
    let mut r = Reader::new(row);
    if r.u8("binary row header")? != 0x00 {
        return Err(Malformed("binary row header"));
    }
    let bitmap = r.bytes((types.len() + 7 + 2) / 8, "NULL bitmap")?;
    let mut out = BytesMut::with_capacity(row.len());
    out.put_u8(0x00);
    out.put_slice(bitmap);
    for (i, (&t, &m)) in types.iter().zip(masked).enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            continue;
        }
        let value = binary_value(&mut r, t)?;
        if m {
            put_lenenc_bytes(&mut out, MASKED_TEXT);
        } else {
            out.put_slice(value);
        }
    }
    if !r.is_empty() {
        return Err(Malformed("binary row longer than its columns"));
    }
    Ok(out)
}

/// One value of type `t` as it is on the wire (prefix included).
fn binary_value<'a>(r: &mut Reader<'a>, t: u8) -> Result<&'a [u8], Malformed> {
    let start = r.rest();
    match t {
        0x01 => r.bytes(1, "TINY")?,
        0x02 | 0x0D => r.bytes(2, "SHORT")?,
        0x03 | 0x09 | 0x04 => r.bytes(4, "LONG")?,
        0x08 | 0x05 => r.bytes(8, "LONGLONG")?,
        0x06 => &[],
        // DATE, TIMESTAMP, DATETIME, TIME (and their *2 forms): 1-byte length.
        0x07 | 0x0A | 0x0B | 0x0C | 0x11 | 0x12 | 0x13 => {
            let n = usize::from(r.u8("temporal length")?);
            r.bytes(n, "temporal")?
        }
        _ => r
            .lenenc_bytes("string value")?
            .ok_or(Malformed("string value"))?,
    };
    let used = start.len() - r.rest().len();
    Ok(&start[..used])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, org_name: &str, t: u8) -> ColumnDefinition {
        ColumnDefinition {
            catalog: b"def".to_vec(),
            schema: b"billing".to_vec(),
            table: b"c".to_vec(),
            org_table: b"customers".to_vec(),
            name: name.as_bytes().to_vec(),
            org_name: org_name.as_bytes().to_vec(),
            charset: 63,
            length: 11,
            column_type: t,
            flags: 0x1001,
            decimals: 0,
        }
    }

    #[test]
    fn column_definition_round_trips_and_masks_by_original_name() {
        let c = column("x", "ssn", 0x03);
        assert_eq!(ColumnDefinition::decode(&c.encode()).unwrap(), c);
        let mask = vec!["SSN".to_string()];
        assert!(c.is_masked_by(&mask));
        assert!(!column("name", "name", 0xFD).is_masked_by(&mask));
        let m = c.masked();
        assert_eq!(
            (m.column_type, m.flags, m.name.as_slice()),
            (TYPE_VAR_STRING, 0x0001, &b"x"[..])
        );
    }

    #[test]
    fn text_rows_keep_null_and_rebuild_lengths() {
        let mut row = BytesMut::new();
        put_lenenc_bytes(&mut row, b"1");
        put_lenenc_bytes(&mut row, &[b'a'; 300]);
        row.put_u8(0xFB);
        let out = mask_text_row(&row, &[false, true, true]).unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(r.lenenc_bytes("a").unwrap(), Some(&b"1"[..]));
        assert_eq!(r.lenenc_bytes("b").unwrap(), Some(MASKED_TEXT));
        assert_eq!(r.lenenc_bytes("c").unwrap(), None);
        assert!(r.is_empty());
        assert!(mask_text_row(&row, &[false, true]).is_err());
    }

    #[test]
    fn binary_rows_mask_every_type_and_keep_null() {
        // Columns: LONG 7, VAR_STRING "123-45-6789", LONGLONG (NULL), DATETIME.
        let types = [0x03, 0xFD, 0x08, 0x0C];
        let mut row = BytesMut::new();
        row.put_u8(0);
        row.put_u8(1 << 4); // column 2 is NULL: bit 2 + 2
        row.put_i32_le(7);
        put_lenenc_bytes(&mut row, b"123-45-6789");
        row.put_slice(&[4, 0xE9, 0x07, 12, 1]);
        let out = mask_binary_row(&row, &types, &[true, true, true, false]).unwrap();
        let mut expect = BytesMut::new();
        expect.put_u8(0);
        expect.put_u8(1 << 4);
        put_lenenc_bytes(&mut expect, MASKED_TEXT);
        put_lenenc_bytes(&mut expect, MASKED_TEXT);
        expect.put_slice(&[4, 0xE9, 0x07, 12, 1]);
        assert_eq!(out, expect);
        assert!(mask_binary_row(&row[..row.len() - 1], &types, &[false; 4]).is_err());
    }
}
