//! Kinds from `sqlparser`'s syntax tree of one MySQL statement.
use std::collections::BTreeSet;

use sqlparser::ast::Statement;

use super::StatementKind;

/// Adds the kinds of `s` (and of a statement it wraps, as `EXPLAIN`
/// does) to `out`.
pub fn of_statement(s: &Statement, out: &mut BTreeSet<StatementKind>) {
    use Statement as S;
    let kind = match s {
        S::Query(_) => StatementKind::Select,
        S::Insert(_) => StatementKind::Insert,
        S::Update { selection, .. } => {
            if selection.is_none() {
                out.insert(StatementKind::UpdateWithoutWhere);
            }
            StatementKind::Update
        }
        S::Delete(d) => {
            if d.selection.is_none() {
                out.insert(StatementKind::DeleteWithoutWhere);
            }
            StatementKind::Delete
        }
        S::Drop { .. }
        | S::DropFunction { .. }
        | S::DropProcedure { .. }
        | S::DropTrigger { .. }
        | S::DropDomain(_)
        | S::DropPolicy { .. }
        | S::DropSecret { .. }
        | S::DropConnector { .. }
        | S::DropExtension { .. } => StatementKind::Drop,
        S::Truncate { .. } => StatementKind::Truncate,
        S::AlterTable { .. }
        | S::AlterSchema(_)
        | S::AlterIndex { .. }
        | S::AlterView { .. }
        | S::AlterType(_)
        | S::AlterRole { .. }
        | S::AlterPolicy { .. }
        | S::AlterConnector { .. }
        | S::AlterSession { .. }
        | S::RenameTable(_) => StatementKind::Alter,
        S::Grant { .. } => StatementKind::Grant,
        S::Revoke { .. } => StatementKind::Revoke,
        S::CreateView { .. }
        | S::CreateTable(_)
        | S::CreateVirtualTable { .. }
        | S::CreateIndex(_)
        | S::CreateRole { .. }
        | S::CreateSchema { .. }
        | S::CreateDatabase { .. }
        | S::CreateFunction(_)
        | S::CreateTrigger { .. }
        | S::CreateProcedure { .. }
        | S::CreateSequence { .. }
        | S::CreateType { .. }
        | S::CreateUser(_) => StatementKind::Create,
        S::LoadData { .. } => StatementKind::LoadData,
        S::Call(_) => StatementKind::Call,
        S::Set(_) => StatementKind::Set,
        S::ShowFunctions { .. }
        | S::ShowVariable { .. }
        | S::ShowStatus { .. }
        | S::ShowVariables { .. }
        | S::ShowCreate { .. }
        | S::ShowColumns { .. }
        | S::ShowDatabases { .. }
        | S::ShowSchemas { .. }
        | S::ShowCharset(_)
        | S::ShowObjects(_)
        | S::ShowTables { .. }
        | S::ShowViews { .. }
        | S::ShowCollation { .. }
        | S::ExplainTable { .. } => StatementKind::Show,
        S::Use(_) => StatementKind::Use,
        S::StartTransaction { .. }
        | S::Commit { .. }
        | S::Rollback { .. }
        | S::Savepoint { .. }
        | S::ReleaseSavepoint { .. } => StatementKind::Transaction,
        S::Explain { statement, .. } => {
            // MySQL's EXPLAIN ANALYZE and MariaDB's ANALYZE run the statement.
            of_statement(statement, out);
            StatementKind::Explain
        }
        S::Prepare { statement, .. } => {
            of_statement(statement, out);
            StatementKind::Prepare
        }
        S::Execute { .. } => StatementKind::Execute,
        S::Deallocate { .. } => StatementKind::Deallocate,
        S::LockTables { .. } | S::UnlockTables => StatementKind::Lock,
        S::Kill { .. } => StatementKind::Kill,
        _ => StatementKind::Other,
    };
    out.insert(kind);
}
