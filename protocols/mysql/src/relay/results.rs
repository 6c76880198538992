//! Relaying the upstream's answer to one command, packet by packet (never
//! a whole result in memory), masking as it goes (MySQL Internals, "Text
//! Resultset", "Binary Protocol Resultset", "COM_STMT_PREPARE Response").
//! Multi-results (`SERVER_MORE_RESULTS_EXISTS`) are followed to the end.
use tokio::io::{AsyncRead, AsyncWrite};

use super::RelayError;
use crate::{
    classify::Escapes,
    packet::PacketStream,
    response::{EofPacket, ErrPacket, OkPacket},
    resultset::{mask_binary_row, mask_text_row, ColumnDefinition},
    wire::Reader,
};

/// `SERVER_MORE_RESULTS_EXISTS`.
const MORE_RESULTS: u16 = 0x0008;

/// What happened in one relayed answer.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Names of the columns that were masked.
    pub masked: Vec<String>,
    /// How many rows had values masked.
    pub rows: u64,
    /// The upstream's error, if the answer was one.
    pub error: Option<ErrPacket>,
}

/// The two ends of a relay and the session's string-escape mode.
pub struct Ends<'a, A, U> {
    pub agent: &'a mut PacketStream<A>,
    pub upstream: &'a mut PacketStream<U>,
    pub escapes: &'a mut Escapes,
}

impl<A, U> Ends<'_, A, U>
where
    A: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    async fn next(&mut self) -> Result<bytes::Bytes, RelayError> {
        Ok(self.upstream.read().await?.payload)
    }

    /// Relays results of `COM_QUERY` (text rows) or `COM_STMT_EXECUTE`
    /// (`binary` rows, masked columns retyped), masking `mask` columns.
    pub async fn results(&mut self, mask: &[String], binary: bool) -> Result<Outcome, RelayError> {
        let mut outcome = Outcome::default();
        loop {
            let first = self.next().await?;
            match first.first() {
                Some(0x00) => {
                    let ok = OkPacket::decode(&first)?;
                    *self.escapes = Escapes::from_status(ok.status);
                    self.agent.write(&first).await?;
                    if ok.status & MORE_RESULTS == 0 {
                        return Ok(outcome);
                    }
                }
                Some(0xFF) => {
                    outcome.error = Some(ErrPacket::decode(&first)?);
                    self.agent.write(&first).await?;
                    return Ok(outcome);
                }
                // LOCAL INFILE request: impossible without CLIENT_LOCAL_FILES.
                Some(0xFB) => return Err(RelayError::LocalInfile),
                _ => {
                    let n = Reader::new(&first).lenenc_int("column count")?.unwrap_or(0);
                    self.agent.write(&first).await?;
                    let (masked, types) = self.definitions(n, mask, binary, &mut outcome).await?;
                    if !self
                        .rows(&masked, binary.then_some(&types[..]), &mut outcome)
                        .await?
                    {
                        return Ok(outcome);
                    }
                }
            }
        }
    }

    /// Relays `n` column definitions and their EOF; returns which are
    /// masked and the original types.
    async fn definitions(
        &mut self,
        n: u64,
        mask: &[String],
        retype: bool,
        outcome: &mut Outcome,
    ) -> Result<(Vec<bool>, Vec<u8>), RelayError> {
        let (mut masked, mut types) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let payload = self.next().await?;
            let def = ColumnDefinition::decode(&payload)?;
            let m = def.is_masked_by(mask);
            if m {
                outcome
                    .masked
                    .push(String::from_utf8_lossy(&def.name).into_owned());
            }
            if m && retype {
                self.agent.write(&def.masked().encode()).await?;
            } else {
                self.agent.write(&payload).await?;
            }
            masked.push(m);
            types.push(def.column_type);
        }
        if n > 0 {
            let eof = self.next().await?;
            if !EofPacket::is_eof(&eof) {
                return Err(RelayError::Unexpected);
            }
            self.agent.write(&eof).await?;
        }
        Ok((masked, types))
    }

    /// Relays rows up to their EOF (or ERR); `true` when more results
    /// follow.
    async fn rows(
        &mut self,
        masked: &[bool],
        binary_types: Option<&[u8]>,
        outcome: &mut Outcome,
    ) -> Result<bool, RelayError> {
        let any = masked.iter().any(|m| *m);
        loop {
            let row = self.next().await?;
            if EofPacket::is_eof(&row) {
                let eof = EofPacket::decode(&row)?;
                *self.escapes = Escapes::from_status(eof.status);
                self.agent.write(&row).await?;
                return Ok(eof.status & MORE_RESULTS != 0);
            }
            if row.first() == Some(&0xFF) {
                outcome.error = Some(ErrPacket::decode(&row)?);
                self.agent.write(&row).await?;
                return Ok(false);
            }
            outcome.rows += u64::from(any);
            match (any, binary_types) {
                (false, _) => self.agent.write(&row).await?,
                (true, None) => self.agent.write(&mask_text_row(&row, masked)?).await?,
                (true, Some(types)) => {
                    self.agent
                        .write(&mask_binary_row(&row, types, masked)?)
                        .await?
                }
            }
        }
    }

    /// Relays a `COM_STMT_PREPARE` answer, retyping masked result
    /// columns; returns the statement id on success.
    pub async fn prepared(&mut self, mask: &[String]) -> Result<Option<u32>, RelayError> {
        let first = self.next().await?;
        self.agent.write(&first).await?;
        if first.first() != Some(&0x00) {
            return Ok(None);
        }
        let mut r = Reader::new(&first[1..]);
        let id = r.u32("statement id")?;
        let columns = r.u16("columns")?;
        let params = r.u16("params")?;
        let mut ignored = Outcome::default();
        self.definitions(u64::from(params), &[], false, &mut ignored)
            .await?;
        self.definitions(u64::from(columns), mask, true, &mut ignored)
            .await?;
        Ok(Some(id))
    }

    /// Relays a one-packet answer (OK, ERR, or `COM_STATISTICS`'s text).
    pub async fn single(&mut self) -> Result<Outcome, RelayError> {
        let p = self.next().await?;
        let error = match p.first() {
            Some(0xFF) => Some(ErrPacket::decode(&p)?),
            _ => None,
        };
        self.agent.write(&p).await?;
        Ok(Outcome {
            error,
            ..Outcome::default()
        })
    }

    /// Relays `COM_FIELD_LIST`'s column definitions up to EOF or ERR.
    pub async fn field_list(&mut self) -> Result<Outcome, RelayError> {
        loop {
            let p = self.next().await?;
            self.agent.write(&p).await?;
            if p.first() == Some(&0xFF) {
                return Ok(Outcome {
                    error: Some(ErrPacket::decode(&p)?),
                    ..Outcome::default()
                });
            }
            if EofPacket::is_eof(&p) {
                return Ok(Outcome::default());
            }
        }
    }
}
