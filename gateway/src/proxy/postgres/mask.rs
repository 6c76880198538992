//! Masking result columns by name (DESIGN.md §4 `mask`): `RowDescription`
//! gives the column names (protocol §55.7), and each `DataRow` is rebuilt
//! with masked values replaced and every length prefix recomputed. NULL
//! stays NULL. A text-format value becomes `****`, and so does a
//! binary-format value of a character type (whose binary form is its text);
//! any other binary-format value becomes NULL, since `****` is no valid
//! binary encoding of, say, an `int8`.
use bytes::{BufMut, BytesMut};

use super::codec::{self, backend, CodecError};

/// What replaces a masked text-format value.
pub const MASKED_TEXT: &[u8] = b"****";

/// A result column as `RowDescription` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The column's type OID.
    pub type_oid: u32,
    /// Format code: 0 text, 1 binary.
    pub format: i16,
}

/// Type OIDs whose binary send format is the text itself (`pg_type.h`):
/// text, varchar, bpchar, name, unknown, json.
const TEXT_LIKE_OIDS: [u32; 6] = [25, 1043, 1042, 19, 705, 114];

/// Parses a `RowDescription` body.
///
/// # Errors
/// [`CodecError::Malformed`] for a truncated body.
pub fn columns(body: &[u8]) -> Result<Vec<Column>, CodecError> {
    let mut b = body;
    let n = codec::i16_at(&mut b, "RowDescription")?;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = codec::cstr(&mut b, "RowDescription")?.to_string();
        // table oid (4), attnum (2), type oid (4), typlen (2), typmod (4)
        if b.len() < 18 {
            return Err(CodecError::Malformed("RowDescription"));
        }
        let type_oid = u32::from_be_bytes([b[6], b[7], b[8], b[9]]);
        b = &b[16..];
        let format = codec::i16_at(&mut b, "RowDescription")?;
        out.push(Column {
            name,
            type_oid,
            format,
        });
    }
    Ok(out)
}

/// Which columns of a result are masked, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowPlan {
    /// Per column: `Some(replacement)` when masked, `None` standing for NULL.
    masked: Vec<Option<Option<&'static [u8]>>>,
    /// Names of the masked columns, for the `masked` record.
    pub names: Vec<String>,
}

impl RowPlan {
    /// The plan for `columns` under the service's `mask` names
    /// (case-insensitive); `formats` overrides the described formats with a
    /// Bind's result-format codes (none = text, one = all, else per column).
    /// `None` when no column is masked.
    pub fn new(columns: &[Column], mask: &[String], formats: Option<&[i16]>) -> Option<RowPlan> {
        let mut names = Vec::new();
        let masked: Vec<Option<Option<&'static [u8]>>> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if !mask.iter().any(|m| m.eq_ignore_ascii_case(&c.name)) {
                    return None;
                }
                names.push(c.name.clone());
                let format = match formats {
                    None => c.format,
                    Some([]) => 0,
                    Some([one]) => *one,
                    Some(all) => all.get(i).copied().unwrap_or(0),
                };
                let as_text = format == 0 || TEXT_LIKE_OIDS.contains(&c.type_oid);
                Some(as_text.then_some(MASKED_TEXT))
            })
            .collect();
        (!names.is_empty()).then_some(RowPlan { masked, names })
    }

    /// Rebuilds the `DataRow` with body `body` into `out`. Returns how many
    /// values were masked (NULLs are not counted).
    ///
    /// # Errors
    /// [`CodecError::Malformed`] for a truncated row or a column count that
    /// differs from the description.
    pub fn apply(&self, body: &[u8], out: &mut BytesMut) -> Result<u64, CodecError> {
        let mut b = body;
        let n = codec::i16_at(&mut b, "DataRow")?;
        if n as usize != self.masked.len() {
            return Err(CodecError::Malformed("DataRow column count"));
        }
        let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(n as usize);
        let mut count = 0;
        for mask in &self.masked {
            let len = codec::i32_at(&mut b, "DataRow")?;
            let value = if len < 0 {
                None
            } else {
                let len = len as usize;
                if b.len() < len {
                    return Err(CodecError::Malformed("DataRow"));
                }
                let (v, rest) = b.split_at(len);
                b = rest;
                Some(v)
            };
            values.push(match (mask, value) {
                (None, v) | (Some(_), v @ None) => v,
                (Some(replacement), Some(_)) => {
                    count += 1;
                    *replacement
                }
            });
        }
        backend::data_row(values.into_iter(), out);
        Ok(count)
    }
}

/// Appends a `DataRow` unchanged.
pub fn passthrough(tag: u8, body: &[u8], out: &mut BytesMut) {
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_description(names: &[&str]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(names.len() as i16);
        for n in names {
            b.put_slice(n.as_bytes());
            b.put_u8(0);
            b.put_slice(&[0u8; 16]);
            b.put_i16(0);
        }
        b.to_vec()
    }

    #[test]
    fn masks_by_name_and_keeps_nulls() {
        let cols = columns(&row_description(&["id", "SSN", "name"])).unwrap();
        let plan = RowPlan::new(&cols, &["ssn".into()], None).unwrap();
        assert_eq!(plan.names, vec!["SSN".to_string()]);
        let mut row = BytesMut::new();
        backend::data_row(
            [Some(&b"1"[..]), Some(&b"123-45-6789"[..]), None].into_iter(),
            &mut row,
        );
        let mut out = BytesMut::new();
        assert_eq!(plan.apply(&row[5..], &mut out).unwrap(), 1);
        let mut expected = BytesMut::new();
        backend::data_row(
            [Some(&b"1"[..]), Some(MASKED_TEXT), None].into_iter(),
            &mut expected,
        );
        assert_eq!(out, expected);

        let mut null_row = BytesMut::new();
        backend::data_row([Some(&b"2"[..]), None, None].into_iter(), &mut null_row);
        out.clear();
        assert_eq!(plan.apply(&null_row[5..], &mut out).unwrap(), 0);
        assert_eq!(out, null_row);
    }

    #[test]
    fn binary_values_become_null() {
        let cols = columns(&row_description(&["ssn"])).unwrap();
        let plan = RowPlan::new(&cols, &["ssn".into()], Some(&[1])).unwrap();
        let mut row = BytesMut::new();
        backend::data_row([Some(&[0u8, 0, 0, 7][..])].into_iter(), &mut row);
        let mut out = BytesMut::new();
        plan.apply(&row[5..], &mut out).unwrap();
        let mut expected = BytesMut::new();
        backend::data_row([None].into_iter(), &mut expected);
        assert_eq!(out, expected);
    }

    #[test]
    fn binary_text_values_become_stars() {
        let mut cols = columns(&row_description(&["ssn"])).unwrap();
        cols[0].type_oid = 25;
        let plan = RowPlan::new(&cols, &["ssn".into()], Some(&[1])).unwrap();
        let mut row = BytesMut::new();
        backend::data_row([Some(&b"123-45-6789"[..])].into_iter(), &mut row);
        let mut out = BytesMut::new();
        plan.apply(&row[5..], &mut out).unwrap();
        let mut expected = BytesMut::new();
        backend::data_row([Some(MASKED_TEXT)].into_iter(), &mut expected);
        assert_eq!(out, expected);
    }

    #[test]
    fn unmasked_results_need_no_plan() {
        let cols = columns(&row_description(&["id"])).unwrap();
        assert!(RowPlan::new(&cols, &["ssn".into()], None).is_none());
    }

    #[test]
    fn truncated_rows_are_errors() {
        let cols = columns(&row_description(&["ssn"])).unwrap();
        let plan = RowPlan::new(&cols, &["ssn".into()], None).unwrap();
        let mut out = BytesMut::new();
        assert!(plan.apply(&[0, 1, 0, 0, 0, 9, b'x'], &mut out).is_err());
        assert!(columns(&[0, 1, b'a']).is_err());
    }
}
