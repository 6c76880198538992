//! Agent commands (MySQL Internals, "Command Phase"): the first byte of a
//! packet that starts a command, read into a typed [`Command`]; and
//! `KILL [QUERY|CONNECTION] <id>` (what the CLI sends from a second
//! connection on Ctrl-C) translated from the connection id Sluice gave the
//! agent to the upstream thread id of that connection ([`translate_kill`]).
use sqlparser::{
    ast::{KillType, Statement},
    dialect::MySqlDialect,
    parser::Parser,
};

use crate::wire::{Malformed, Reader};

/// One agent command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `COM_QUIT`.
    Quit,
    /// `COM_INIT_DB`: change the default database.
    InitDb(&'a [u8]),
    /// `COM_QUERY`: SQL text, possibly several statements.
    Query(&'a [u8]),
    /// `COM_FIELD_LIST` (deprecated): the columns of a table.
    FieldList(&'a [u8]),
    /// `COM_STATISTICS`.
    Statistics,
    /// `COM_PROCESS_KILL` (deprecated): kill connection `id`.
    ProcessKill(u32),
    /// `COM_PING`.
    Ping,
    /// `COM_CHANGE_USER`: a new login on this connection.
    ChangeUser,
    /// `COM_STMT_PREPARE`: SQL text of one statement.
    StmtPrepare(&'a [u8]),
    /// `COM_STMT_EXECUTE` of a prepared statement; `flags` are the cursor
    /// flags (`CURSOR_TYPE_*`, 0 for none).
    StmtExecute { statement_id: u32, flags: u8 },
    /// `COM_STMT_SEND_LONG_DATA`.
    StmtSendLongData { statement_id: u32 },
    /// `COM_STMT_CLOSE`.
    StmtClose { statement_id: u32 },
    /// `COM_STMT_RESET`.
    StmtReset { statement_id: u32 },
    /// `COM_SET_OPTION` (multi-statements on or off).
    SetOption(u16),
    /// `COM_STMT_FETCH` (cursor rows).
    StmtFetch { statement_id: u32 },
    /// `COM_RESET_CONNECTION`.
    ResetConnection,
    /// Anything else, by its command byte (refused by a handler that does
    /// not know it).
    Other(u8),
}

impl<'a> Command<'a> {
    /// Reads a command packet.
    pub fn decode(payload: &'a [u8]) -> Result<Command<'a>, Malformed> {
        let mut r = Reader::new(payload);
        let code = r.u8("command")?;
        let id = |r: &mut Reader<'a>| r.u32("statement id");
        Ok(match code {
            0x01 => Command::Quit,
            0x02 => Command::InitDb(r.take_rest()),
            0x03 => Command::Query(r.take_rest()),
            0x04 => Command::FieldList(r.nul_bytes_or_rest()),
            0x09 => Command::Statistics,
            0x0C => Command::ProcessKill(r.u32("connection id")?),
            0x0E => Command::Ping,
            0x11 => Command::ChangeUser,
            0x16 => Command::StmtPrepare(r.take_rest()),
            0x17 => Command::StmtExecute {
                statement_id: id(&mut r)?,
                flags: r.u8("flags")?,
            },
            0x18 => Command::StmtSendLongData {
                statement_id: id(&mut r)?,
            },
            0x19 => Command::StmtClose {
                statement_id: id(&mut r)?,
            },
            0x1A => Command::StmtReset {
                statement_id: id(&mut r)?,
            },
            0x1B => Command::SetOption(r.u16("option")?),
            0x1C => Command::StmtFetch {
                statement_id: id(&mut r)?,
            },
            0x1F => Command::ResetConnection,
            other => Command::Other(other),
        })
    }
}

/// What a `KILL` statement names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// `KILL QUERY id`: end the running statement.
    Query(u64),
    /// `KILL [CONNECTION] id`: end the connection.
    Connection(u64),
}

/// The `KILL` of a text that is exactly one `KILL` statement (parsed by
/// `sqlparser`'s MySQL dialect), else `None`. A text that
/// [`crate::classify`] finds a `KILL` in but this does not read (inside an
/// executable comment, among other statements) is for the handler to
/// refuse: only a translated `KILL` may reach the upstream.
pub fn parse_kill(sql: &str) -> Option<Kill> {
    let parsed = Parser::parse_sql(&MySqlDialect {}, sql).ok()?;
    match parsed.as_slice() {
        [Statement::Kill { modifier, id }] => match modifier {
            Some(KillType::Query) => Some(Kill::Query(*id)),
            None | Some(KillType::Connection) => Some(Kill::Connection(*id)),
            Some(KillType::Mutation) => None,
        },
        _ => None,
    }
}

/// The `KILL` to send upstream for `kill`, whose id is a connection id
/// Sluice gave an agent: `upstream_of` maps the ids the agent owns to
/// their upstream thread ids. `None` for an id the agent does not own.
pub fn translate_kill(kill: Kill, upstream_of: impl Fn(u64) -> Option<u32>) -> Option<String> {
    match kill {
        Kill::Query(id) => upstream_of(id).map(|up| format!("KILL QUERY {up}")),
        Kill::Connection(id) => upstream_of(id).map(|up| format!("KILL CONNECTION {up}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_decode_by_their_first_byte() {
        assert_eq!(
            Command::decode(b"\x03SELECT 1").unwrap(),
            Command::Query(b"SELECT 1")
        );
        assert_eq!(Command::decode(b"\x01").unwrap(), Command::Quit);
        assert_eq!(
            Command::decode(b"\x17\x05\0\0\0\0\x01\0\0\0").unwrap(),
            Command::StmtExecute {
                statement_id: 5,
                flags: 0
            }
        );
        assert_eq!(
            Command::decode(b"\x04customers\0%").unwrap(),
            Command::FieldList(b"customers")
        );
        assert_eq!(
            Command::decode(b"\x11anything").unwrap(),
            Command::ChangeUser
        );
        assert_eq!(Command::decode(b"\xFA").unwrap(), Command::Other(0xFA));
        assert!(Command::decode(b"").is_err());
        assert!(Command::decode(b"\x19\x01").is_err());
    }

    #[test]
    fn kill_query_is_translated_for_owned_ids_only() {
        let own = |id: u64| (id == 101).then_some(7_u32);
        assert_eq!(parse_kill("KILL QUERY 101"), Some(Kill::Query(101)));
        assert_eq!(parse_kill("kill 101"), Some(Kill::Connection(101)));
        assert_eq!(parse_kill("KILL QUERY 101; DROP TABLE t"), None);
        assert_eq!(parse_kill("SELECT 1"), None);
        assert_eq!(
            translate_kill(Kill::Query(101), own).as_deref(),
            Some("KILL QUERY 7")
        );
        assert_eq!(translate_kill(Kill::Query(102), own), None);
        assert_eq!(
            translate_kill(Kill::Connection(101), own).as_deref(),
            Some("KILL CONNECTION 7")
        );
    }
}
