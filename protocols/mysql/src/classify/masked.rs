//! Where a statement reads a masked column in a way masking cannot follow
//! (the rule PostgreSQL services follow, DESIGN.md §4, read for MySQL).
//!
//! The relay masks a value when its column definition's name or original
//! name (`org_name`, the table column behind an alias) is a `mask` name.
//! That holds only while the value leaves as that column. So, where a mask
//! is in force, a masked name may appear only:
//! - as a bare column of a top-level `SELECT`'s list, aliased or not
//!   (`SELECT ssn AS x` keeps `org_name = ssn`); `*` is expanded by the
//!   server under the columns' own names;
//! - as a direct operand of a comparison, `IS [NOT] NULL`, `LIKE`, `IN`,
//!   `BETWEEN` in `WHERE`/`HAVING`, or as a bare `GROUP BY`/`ORDER BY`
//!   key: an oracle, but no value in any output.
//!
//! Anywhere else it is an [`Exposure`]: expressions (`UPPER(ssn)`,
//! `CONCAT(ssn)`), set operations (`UNION` names its columns after the
//! first branch), sub-selects and CTEs, `SELECT … INTO`, `INSERT …
//! SELECT`, `UPDATE … SET x = ssn`, views, and `PREPARE` texts read the
//! same way. The check is conservative: it may refuse a harmless reading,
//! never pass a leaking one it can see. Text that does not parse is not
//! judged here ([`super::classify`] reports it as unparseable).
use std::ops::ControlFlow;

use sqlparser::{
    ast::{
        visit_expressions, BinaryOperator, Expr, GroupByExpr, OrderByKind, Query, Select,
        SelectItem, SetExpr, Statement, Visit,
    },
    parser::Parser,
};

use super::{
    tokens::{self, TokenForm},
    Escapes, NoBackslashMySql,
};

/// A masked column read in a way masking cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("masked column {column:?} is read in a way that masking cannot follow")]
pub struct Exposure {
    /// The `mask` name concerned.
    pub column: String,
}

/// Checks `sql` (as the server reads it under `escapes`) against `mask`.
pub fn check_exposure(sql: &str, escapes: Escapes, mask: &[String]) -> Result<(), Exposure> {
    if mask.is_empty() {
        return Ok(());
    }
    let mysql = sqlparser::dialect::MySqlDialect {};
    let no_backslash = NoBackslashMySql::default();
    let dialect: &dyn sqlparser::dialect::Dialect = match escapes {
        Escapes::Backslash => &mysql,
        Escapes::NoBackslash => &no_backslash,
    };
    let scan = Scan { mask };
    let Ok(statements) = tokens::split(dialect, sql) else {
        return Ok(());
    };
    for statement in statements {
        match statement.form(dialect) {
            Ok(Some(TokenForm::PrepareText(text))) => check_exposure(&text, escapes, mask)?,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => {
                if let Ok(parsed) = Parser::parse_sql(dialect, &statement.text()) {
                    for s in &parsed {
                        scan.statement(s)?;
                    }
                }
            }
        }
    }
    Ok(())
}

struct Scan<'a> {
    mask: &'a [String],
}

impl Scan<'_> {
    fn masked_name(&self, e: &Expr) -> Option<String> {
        let ident = match e {
            Expr::Identifier(i) => i,
            Expr::CompoundIdentifier(parts) => parts.last()?,
            _ => return None,
        };
        self.mask
            .iter()
            .find(|m| m.eq_ignore_ascii_case(&ident.value))
            .cloned()
    }

    fn is_bare(e: &Expr) -> bool {
        matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
    }

    /// Any masked name anywhere in `node` is an exposure.
    fn none<V: Visit>(&self, node: &V) -> Result<(), Exposure> {
        match visit_expressions(node, |e| match self.masked_name(e) {
            Some(column) => ControlFlow::Break(column),
            None => ControlFlow::Continue(()),
        }) {
            ControlFlow::Break(column) => Err(Exposure { column }),
            ControlFlow::Continue(()) => Ok(()),
        }
    }

    fn statement(&self, s: &Statement) -> Result<(), Exposure> {
        match s {
            Statement::Query(q) => self.query(q, true),
            Statement::Explain { statement, .. } => self.statement(statement),
            other => self.none(other),
        }
    }

    fn query(&self, q: &Query, top: bool) -> Result<(), Exposure> {
        self.none(&q.with)?;
        self.none(&q.limit_clause)?;
        self.none(&q.fetch)?;
        if let Some(order_by) = &q.order_by {
            if let OrderByKind::Expressions(exprs) = &order_by.kind {
                for o in exprs {
                    self.key(&o.expr)?;
                }
            }
        }
        self.set_expr(&q.body, top)
    }

    fn set_expr(&self, body: &SetExpr, top: bool) -> Result<(), Exposure> {
        match body {
            SetExpr::Select(s) => self.select(s, top),
            SetExpr::Query(q) => self.query(q, top),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left, false)?;
                self.set_expr(right, false)
            }
            other => self.none(other),
        }
    }

    fn select(&self, s: &Select, top: bool) -> Result<(), Exposure> {
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }
                    if top && s.into.is_none() && Self::is_bare(e) => {}
                other => self.none(other)?,
            }
        }
        if let Some(w) = &s.selection {
            self.condition(w)?;
        }
        if let Some(h) = &s.having {
            self.condition(h)?;
        }
        if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
            for e in exprs {
                self.key(e)?;
            }
        }
        let mut rest = s.clone();
        rest.projection.clear();
        rest.selection = None;
        rest.having = None;
        rest.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
        self.none(&rest)
    }

    /// A `GROUP BY`/`ORDER BY` key: bare, or free of masked names.
    fn key(&self, e: &Expr) -> Result<(), Exposure> {
        if Self::is_bare(e) {
            Ok(())
        } else {
            self.none(e)
        }
    }

    /// A condition: masked names only as direct operands of comparisons.
    fn condition(&self, e: &Expr) -> Result<(), Exposure> {
        use BinaryOperator as B;
        match e {
            Expr::BinaryOp { left, op, right } => match op {
                B::And | B::Or | B::Xor => {
                    self.condition(left)?;
                    self.condition(right)
                }
                B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq | B::Spaceship => {
                    self.operand(left)?;
                    self.operand(right)
                }
                _ => self.none(e),
            },
            Expr::Nested(inner) => self.condition(inner),
            Expr::UnaryOp { expr, .. } => self.condition(expr),
            Expr::IsNull(x) | Expr::IsNotNull(x) => self.operand(x),
            Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
                self.operand(expr)?;
                self.operand(pattern)
            }
            Expr::InList { expr, list, .. } => {
                self.operand(expr)?;
                list.iter().try_for_each(|x| self.operand(x))
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                self.operand(expr)?;
                self.operand(low)?;
                self.operand(high)
            }
            other => self.none(other),
        }
    }

    fn operand(&self, e: &Expr) -> Result<(), Exposure> {
        if Self::is_bare(e) {
            Ok(())
        } else {
            self.condition(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposed(sql: &str) -> bool {
        check_exposure(sql, Escapes::Backslash, &["ssn".to_string()]).is_err()
    }

    #[test]
    fn bare_columns_stars_and_oracles_pass() {
        for sql in [
            "SELECT ssn FROM customers",
            "SELECT c.ssn AS tax_id, name FROM customers c",
            "SELECT * FROM customers",
            "SELECT name FROM customers WHERE ssn = '1' AND ssn IS NOT NULL OR ssn LIKE '9%'",
            "SELECT name FROM customers WHERE ssn IN ('1', '2') ORDER BY ssn",
            "SELECT COUNT(*) FROM customers GROUP BY ssn",
            "DELETE FROM customers WHERE id = 1",
            "SELECT 1; SELECT ssn FROM customers",
        ] {
            assert!(!exposed(sql), "{sql}");
        }
    }

    #[test]
    fn expressions_unions_subqueries_and_writes_are_exposures() {
        for sql in [
            "SELECT UPPER(ssn) FROM customers",
            "SELECT CONCAT('', `ssn`) AS x FROM customers",
            "SELECT name FROM customers UNION SELECT ssn FROM customers",
            "SELECT x FROM (SELECT ssn AS x FROM customers) t",
            "WITH t AS (SELECT ssn FROM customers) SELECT * FROM t",
            "SELECT ssn INTO @v FROM customers",
            "INSERT INTO notes SELECT ssn FROM customers",
            "UPDATE customers SET name = ssn",
            "CREATE VIEW v AS SELECT ssn AS x FROM customers",
            "SELECT name FROM customers WHERE SUBSTR(ssn, 1, 1) = '1'",
            "SELECT name FROM customers ORDER BY ssn + 0",
            "SELECT 1; SELECT LOWER(ssn) FROM customers",
            "PREPARE s FROM 'SELECT UPPER(ssn) FROM customers'",
            "/*!50000 SELECT HEX(ssn) FROM customers */",
        ] {
            assert!(exposed(sql), "{sql}");
        }
    }
}
