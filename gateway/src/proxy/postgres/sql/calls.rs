//! Function calls: their names in the parse tree and the default set of dangerous functions
//! ([`super::StatementKind::DangerousFunctions`]).
//!
//! A call is a `FuncCall` node wherever it sits (select list, `WHERE`,
//! CTEs, sub-selects, `FROM f()`, `CALL`, column defaults, PL/pgSQL
//! statements and expressions of `DO` blocks and function bodies). Its
//! `funcname` is a list of `String` nodes: `["pg_catalog", "lo_unlink"]`.
//! Names are compared in lower case: PostgreSQL folds unquoted names, and a
//! quoted `"LO_UNLINK"` would be another function, so folding can only
//! match more, never less.

use serde_json::Value;

/// Functions that change or reach outside the database when called from an
/// otherwise harmless `SELECT`: large objects (write, import, export,
/// unlink), backend signalling, configuration, server file access, dblink,
/// replication slots, WAL and backup control, sequence resets. Matched on
/// the unqualified name, whatever the schema.
pub const DANGEROUS: &[&str] = &[
    // Large objects.
    "lo_create",
    "lo_creat",
    "lo_export",
    "lo_from_bytea",
    "lo_import",
    "lo_put",
    "lo_truncate",
    "lo_truncate64",
    "lo_unlink",
    "lowrite",
    // Backend signalling and server control.
    "pg_cancel_backend",
    "pg_log_backend_memory_contexts",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_terminate_backend",
    // Configuration.
    "set_config",
    // Server files.
    "pg_file_rename",
    "pg_file_sync",
    "pg_file_unlink",
    "pg_file_write",
    "pg_ls_archive_statusdir",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_logicalmapdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir",
    "pg_ls_tmpdir",
    "pg_ls_waldir",
    "pg_read_binary_file",
    "pg_read_file",
    "pg_stat_file",
    // dblink: SQL run on another connection, unseen.
    "dblink",
    "dblink_connect",
    "dblink_connect_u",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
    // Replication slots, WAL, backup and recovery.
    "pg_backup_start",
    "pg_backup_stop",
    "pg_copy_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_restore_point",
    "pg_drop_replication_slot",
    "pg_logical_emit_message",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_get_changes",
    "pg_promote",
    "pg_replication_origin_create",
    "pg_replication_origin_drop",
    "pg_replication_slot_advance",
    "pg_switch_wal",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    // Sequences.
    "setval",
];

/// The name of a `FuncCall` node: lower case, dotted when qualified
/// (`pg_catalog.lo_unlink`).
pub(super) fn name(func_call: &Value) -> String {
    let parts = func_call["funcname"].as_array().into_iter().flatten();
    let parts: Vec<&str> = parts
        .filter_map(|p| p.pointer("/node/String/sval").and_then(Value::as_str))
        .collect();
    parts.join(".").to_lowercase()
}

/// True when `called` (from [`name`]) is in [`DANGEROUS`].
pub(super) fn is_dangerous(called: &str) -> bool {
    DANGEROUS.contains(&crate::policy::statement::unqualified(called))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_functions_match_in_any_schema() {
        assert!(is_dangerous("pg_catalog.pg_terminate_backend"));
        assert!(!is_dangerous("count"));
    }
}
