//! Kinds from `sqlparser`'s syntax tree of one MySQL statement.
use std::collections::BTreeSet;

use sqlparser::ast::Statement;

use super::Kind;

/// Adds the kinds of `s` (and of a statement it wraps, as `EXPLAIN`
/// does) to `out`.
pub fn of_statement(s: &Statement, out: &mut BTreeSet<Kind>) {
    use Statement as S;
    let kind = match s {
        S::Query(_) => Kind::Select,
        S::Insert(_) => Kind::Insert,
        S::Update { selection, .. } => {
            if selection.is_none() {
                out.insert(Kind::UpdateWithoutWhere);
            }
            Kind::Update
        }
        S::Delete(d) => {
            if d.selection.is_none() {
                out.insert(Kind::DeleteWithoutWhere);
            }
            Kind::Delete
        }
        S::Drop { .. }
        | S::DropFunction { .. }
        | S::DropProcedure { .. }
        | S::DropTrigger { .. }
        | S::DropDomain(_)
        | S::DropPolicy { .. }
        | S::DropSecret { .. }
        | S::DropConnector { .. }
        | S::DropExtension { .. } => Kind::Drop,
        S::Truncate { .. } => Kind::Truncate,
        S::AlterTable { .. }
        | S::AlterSchema(_)
        | S::AlterIndex { .. }
        | S::AlterView { .. }
        | S::AlterType(_)
        | S::AlterRole { .. }
        | S::AlterPolicy { .. }
        | S::AlterConnector { .. }
        | S::AlterSession { .. }
        | S::RenameTable(_) => Kind::Alter,
        S::Grant { .. } => Kind::Grant,
        S::Revoke { .. } => Kind::Revoke,
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
        | S::CreateUser(_) => Kind::Create,
        S::LoadData { .. } => Kind::LoadData,
        S::Call(_) => Kind::Call,
        S::Set(_) => Kind::Set,
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
        | S::ExplainTable { .. } => Kind::Show,
        S::Use(_) => Kind::Use,
        S::StartTransaction { .. }
        | S::Commit { .. }
        | S::Rollback { .. }
        | S::Savepoint { .. }
        | S::ReleaseSavepoint { .. } => Kind::Transaction,
        S::Explain { statement, .. } => {
            // MySQL's EXPLAIN ANALYZE and MariaDB's ANALYZE run the statement.
            of_statement(statement, out);
            Kind::Explain
        }
        S::Prepare { statement, .. } => {
            of_statement(statement, out);
            Kind::Prepare
        }
        S::Execute { .. } => Kind::Execute,
        S::Deallocate { .. } => Kind::Deallocate,
        S::LockTables { .. } | S::UnlockTables => Kind::Lock,
        S::Kill { .. } => Kind::Kill,
        _ => Kind::Other,
    };
    out.insert(kind);
}
