//! Where a statement reads columns in ways masking cannot follow.
//!
//! A service's `mask` names result columns (DESIGN.md §4), and the relay
//! masks a `DataRow` value when its `RowDescription` column has a masked
//! name (PostgreSQL protocol §55.7). That holds only while the value keeps
//! its column's name on the way out. So, on a service with masks, a masked
//! column name may appear only:
//! - as a bare, unaliased entry of the target list of a top-level `SELECT`
//!   (`SELECT ssn, name FROM customers`), or `*` / `t.*` there, which the
//!   server expands under the columns' own names;
//! - as a direct operand of a comparison (`=`, `<`, `IN`, `LIKE`,
//!   `BETWEEN`, `IS DISTINCT FROM`, `= ANY`…), of `IS [NOT] NULL`, or as a
//!   bare `ORDER BY`/`GROUP BY` key: an oracle, but no value in any output
//!   or error message.
//!
//! Everything else can carry the value out under another name, or in an
//! error or notification: an alias (`ssn AS x`), an expression
//! (`upper(ssn)`), a cast (`ssn::int` quotes the value in its error), a
//! function argument (`pg_notify('c', ssn)`), `RETURNING`, the target lists
//! of sub-selects, CTEs, set operations, `INSERT … SELECT` or `CREATE TABLE
//! AS`, and renaming the column. Some ways are refused whatever the mask
//! names, because what they carry cannot be told from the text: a whole-row
//! reference (`SELECT c FROM customers c`, `row_to_json(c)`), `*` anywhere
//! but the top-level target list (or an `EXISTS` sub-select), a column alias
//! list (`FROM customers AS c(i, n, x)`), and dynamic SQL in a `DO` block or
//! function. Inside `DO` blocks and function bodies nothing counts as
//! top-level: their results never reach the agent as rows. A function in
//! `FROM` (`generate_series(1, 3) AS g(n)`) may be aliased freely: what a
//! function returns is out of reach anyway (see [`super`]).
//!
//! The scan reads the same serde form of the parse tree as
//! [`super::walk`]; its result depends on the text's identifiers only, so it
//! is cached with the classification and checked against the mask list of
//! the service at hand ([`Exposures::check`]).

use std::collections::HashSet;

use pg_query::protobuf::{AExprKind, SetOperation, SubLinkType};
use serde_json::Value;

/// What a statement reads in ways masking cannot follow. Part of a
/// [`super::Classification`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exposures {
    /// Column names (lower case, each once) referenced where masking by
    /// output name cannot follow; refused when the mask names one.
    pub columns: Vec<String>,
    /// A reference that may carry any column (whole row, `*` out of place,
    /// column alias list, dynamic SQL): refused when the service masks
    /// anything. The text says which.
    pub rows: Option<String>,
}

impl Exposures {
    /// Checks these exposures against a service's `mask` (column names,
    /// compared case-insensitively, as the relay compares them with
    /// `RowDescription` names).
    ///
    /// # Errors
    /// The reason, for the agent's ErrorResponse (`42501`) and the record.
    pub fn check(&self, mask: &[&str]) -> Result<(), String> {
        if mask.is_empty() {
            return Ok(());
        }
        if let Some(what) = &self.rows {
            return Err(format!(
                "{what} is refused on a service with masked columns: it can carry a masked column under another name"
            ));
        }
        match self
            .columns
            .iter()
            .find(|c| mask.iter().any(|m| m.trim().eq_ignore_ascii_case(c)))
        {
            Some(column) => Err(format!(
                "masked column {column} may only be selected directly; aliases, expressions, casts and function arguments are refused"
            )),
            None => Ok(()),
        }
    }

    /// Notes dynamic SQL whose text is only known at run time.
    pub(super) fn dynamic_sql(&mut self) {
        self.rows
            .get_or_insert_with(|| "dynamic SQL (EXECUTE of a computed string)".into());
    }

    /// Notes a PL/pgSQL expression that could not be parsed.
    pub(super) fn unreadable_expression(&mut self) {
        self.rows
            .get_or_insert_with(|| "a PL/pgSQL expression Sluice cannot parse".into());
    }

    fn row(&mut self, what: String) {
        self.rows.get_or_insert(what);
    }

    fn column(&mut self, name: &str) {
        let name = name.to_lowercase();
        if !self.columns.contains(&name) {
            self.columns.push(name);
        }
    }
}

/// Scans one statement (`stmt`: the serde form of a `RawStmt`'s `stmt`
/// node, `{"node": {"SelectStmt": {…}}}`) into `out`. `nested` is true
/// inside a `DO` block or function body.
pub(super) fn scan(stmt: &Value, nested: bool, out: &mut Exposures) {
    let mut relations = HashSet::new();
    collect_relations(stmt, &mut relations);
    let mut scan = Scan { relations, out };
    match node_of(stmt) {
        Some(("SelectStmt", select)) if !nested && is_plain_select(select) => {
            scan.select(select, Place::TOP)
        }
        _ => scan.walk(stmt),
    }
}

/// Where a column reference sits.
#[derive(Clone, Copy)]
struct Place {
    /// A masked name is fine here.
    column: bool,
    /// `*` / `t.*` is fine here.
    star: bool,
}

impl Place {
    const FREE: Place = Place {
        column: false,
        star: false,
    };
    const ORACLE: Place = Place {
        column: true,
        star: false,
    };
    const TOP: Place = Place {
        column: true,
        star: true,
    };
}

struct Scan<'o> {
    /// Table names, aliases and CTE names (lower case): a one-field column
    /// reference naming one is a whole-row reference.
    relations: HashSet<String>,
    out: &'o mut Exposures,
}

impl Scan<'_> {
    /// Visits any value of the tree; every column reference below is in a
    /// place where masking cannot follow unless a node says otherwise.
    fn walk(&mut self, value: &Value) {
        if let Some((name, body)) = node_of(value) {
            return self.node(name, body);
        }
        match value {
            Value::Array(items) => items.iter().for_each(|item| self.walk(item)),
            Value::Object(map) => {
                // An `Alias` (a message field, not a `Node`).
                if map.contains_key("aliasname") && !is_empty_list(value, "colnames") {
                    self.out.row(format!(
                        "the column alias list of {}",
                        value["aliasname"].as_str().unwrap_or("a relation")
                    ));
                }
                map.values().for_each(|child| self.walk(child));
            }
            _ => {}
        }
    }

    fn node(&mut self, name: &str, body: &Value) {
        match name {
            "ColumnRef" => self.column_ref(body, Place::FREE),
            "AExpr" if is_comparison(body) => {
                self.operand(&body["lexpr"]);
                match node_of(&body["rexpr"]) {
                    Some(("List", list)) => {
                        for item in list["items"].as_array().into_iter().flatten() {
                            self.operand(item);
                        }
                    }
                    _ => self.operand(&body["rexpr"]),
                }
            }
            "NullTest" => {
                self.operand(&body["arg"]);
            }
            "SortBy" => {
                self.operand(&body["node"]);
                self.walk(&body["use_op"]);
            }
            "SubLink" => {
                let kind = int(body, "sub_link_type");
                if kind == Some(SubLinkType::ExistsSublink as i64) {
                    if let Some(("SelectStmt", select)) = node_of(&body["subselect"]) {
                        // An EXISTS target list is never output.
                        self.select(select, Place::TOP);
                    }
                } else {
                    if kind == Some(SubLinkType::AnySublink as i64)
                        || kind == Some(SubLinkType::AllSublink as i64)
                    {
                        self.operand(&body["testexpr"]);
                    } else {
                        self.walk(&body["testexpr"]);
                    }
                    self.walk(&body["subselect"]);
                }
            }
            "SelectStmt" => self.select(body, Place::FREE),
            // A function in FROM: its alias and column aliases name the
            // function's output, which is out of reach like any function.
            "RangeFunction" => {
                for (field, value) in body.as_object().into_iter().flatten() {
                    if field != "alias" {
                        self.walk(value);
                    }
                }
            }
            "RenameStmt" => {
                if let Some(column) = body["subname"].as_str().filter(|c| !c.is_empty()) {
                    self.out.column(column);
                }
                self.walk(body);
            }
            _ => self.walk(body),
        }
    }

    /// A comparison operand: a bare column reference is an oracle; anything
    /// else is walked as usual.
    fn operand(&mut self, value: &Value) {
        match node_of(value) {
            Some(("ColumnRef", column)) => self.column_ref(column, Place::ORACLE),
            _ => self.walk(value),
        }
    }

    /// A `SelectStmt`; `targets` is where its bare target-list entries sit.
    fn select(&mut self, select: &Value, targets: Place) {
        for target in select["target_list"].as_array().into_iter().flatten() {
            let Some(("ResTarget", res)) = node_of(target) else {
                self.walk(target);
                continue;
            };
            match node_of(&res["val"]) {
                Some(("ColumnRef", column)) if is_unset(res, "name") => {
                    self.column_ref(column, targets)
                }
                _ => self.walk(&res["val"]),
            }
        }
        for group in select["group_clause"].as_array().into_iter().flatten() {
            self.operand(group);
        }
        for (field, value) in select.as_object().into_iter().flatten() {
            if field != "target_list" && field != "group_clause" {
                self.walk(value);
            }
        }
    }

    fn column_ref(&mut self, column: &Value, place: Place) {
        let fields = column["fields"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match fields.last().and_then(node_of) {
            Some(("AStar", _)) if !place.star => {
                self.out.row("`*` outside the top-level select list".into());
            }
            Some(("String", s)) => {
                let name = s["sval"].as_str().unwrap_or_default();
                if fields.len() == 1 && self.relations.contains(&name.to_lowercase()) {
                    self.out.row(format!("the whole-row reference {name}"));
                } else if !place.column {
                    self.out.column(name);
                }
            }
            _ => {}
        }
    }
}

/// Collects table names, aliases and CTE names anywhere below `value`.
fn collect_relations(value: &Value, out: &mut HashSet<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|i| collect_relations(i, out)),
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child.as_str()) {
                    ("relname" | "aliasname" | "ctename", Some(name)) => {
                        out.insert(name.to_lowercase());
                    }
                    // `FROM generate_series(1, 3) g`: `g` is the value.
                    ("RangeFunction", _) => {
                        for (field, value) in child.as_object().into_iter().flatten() {
                            if field != "alias" {
                                collect_relations(value, out);
                            }
                        }
                    }
                    _ => collect_relations(child, out),
                }
            }
        }
        _ => {}
    }
}

/// A SELECT whose target list names the result columns: no set operation
/// (whose later branches output under the first one's names) and no
/// `INTO` (which stores the values).
fn is_plain_select(select: &Value) -> bool {
    let op = int(select, "op");
    (op.is_none() || op == Some(SetOperation::SetopNone as i64)) && is_unset(select, "into_clause")
}

/// An `A_Expr` whose value is a boolean about its operands (never one of
/// them, as `NULLIF` would be).
fn is_comparison(expr: &Value) -> bool {
    use AExprKind as K;
    let Some(kind) = int(expr, "kind") else {
        return false;
    };
    let operator = expr["name"]
        .as_array()
        .and_then(|n| n.last())
        .and_then(|n| n.pointer("/node/String/sval"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let compares = matches!(
        operator,
        "=" | "<>"
            | "!="
            | "<"
            | ">"
            | "<="
            | ">="
            | "~~"
            | "!~~"
            | "~~*"
            | "!~~*"
            | "~"
            | "~*"
            | "!~"
            | "!~*"
    );
    [K::AexprOp, K::AexprOpAny, K::AexprOpAll]
        .iter()
        .any(|k| *k as i64 == kind)
        && compares
        || [
            K::AexprDistinct,
            K::AexprNotDistinct,
            K::AexprIn,
            K::AexprLike,
            K::AexprIlike,
            K::AexprSimilar,
            K::AexprBetween,
            K::AexprNotBetween,
            K::AexprBetweenSym,
            K::AexprNotBetweenSym,
        ]
        .iter()
        .any(|k| *k as i64 == kind)
}

/// `{"node": {"TypeName": {…}}}` → `("TypeName", {…})`.
fn node_of(value: &Value) -> Option<(&str, &Value)> {
    let (name, body) = value.get("node")?.as_object()?.iter().next()?;
    Some((name.as_str(), body))
}

/// A field that is null, missing or an empty string (how an unset
/// protobuf string serializes).
fn is_unset(node: &Value, field: &str) -> bool {
    node.get(field)
        .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
}

fn is_empty_list(node: &Value, field: &str) -> bool {
    node.get(field)
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

fn int(node: &Value, field: &str) -> Option<i64> {
    node.get(field).and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::super::classify;

    /// The refusal for `sql` on a service masking `ssn`, if any.
    fn refused(sql: &str) -> Option<String> {
        let c = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.exposures.check(&["ssn"]).err()
    }

    #[test]
    fn selecting_a_masked_column_directly_or_by_star_is_allowed() {
        for sql in [
            "SELECT ssn, name FROM customers WHERE id = 1",
            "SELECT c.ssn FROM customers c",
            "SELECT * FROM customers",
            "SELECT c.*, 1 FROM customers c",
            "TABLE customers",
            "SELECT upper(name) AS n, id + 1 FROM customers",
            "SELECT name FROM customers WHERE ssn = '1' AND ssn IN ('a', 'b') AND ssn LIKE '1%' AND ssn IS NOT NULL",
            "SELECT name FROM customers WHERE ssn BETWEEN 'a' AND 'b' OR ssn IS DISTINCT FROM name OR ssn = ANY('{a}')",
            "SELECT id FROM customers a JOIN customers b ON a.ssn = b.ssn GROUP BY ssn HAVING ssn <> '' ORDER BY ssn",
            "SELECT id FROM customers WHERE ssn IN (SELECT x FROM other)",
            "SELECT id FROM customers WHERE EXISTS (SELECT * FROM orders o WHERE o.cid = customers.id)",
            "UPDATE customers SET ssn = 'x' WHERE ssn = 'y'",
            "DELETE FROM customers WHERE ssn = '1'",
            "SELECT count(*) FROM customers",
            "SELECT g, repeat('x', 100) FROM generate_series(1, 10) g",
            "SELECT n FROM generate_series(1, 3) AS g(n)",
        ] {
            assert_eq!(refused(sql), None, "{sql}");
        }
    }

    #[test]
    fn each_way_around_masking_is_refused_naming_the_column() {
        for sql in [
            "SELECT ssn AS x FROM customers",
            "SELECT upper(ssn) FROM customers",
            "SELECT ssn::int FROM customers WHERE id = 1",
            "SELECT CAST(ssn AS int) FROM customers",
            "SELECT pg_notify('leak', ssn) FROM customers",
            "SELECT ssn || '' FROM customers",
            "SELECT NULLIF(ssn, '') FROM customers",
            "SELECT name FROM customers UNION SELECT ssn FROM customers",
            "SELECT x FROM (SELECT ssn AS x FROM customers) s",
            "SELECT * FROM (SELECT ssn FROM customers) s",
            "WITH s AS (SELECT ssn FROM customers) SELECT * FROM s",
            "SELECT (SELECT ssn FROM customers LIMIT 1)",
            "SELECT name FROM customers WHERE ssn::int = 1",
            "DELETE FROM customers WHERE id = 1 RETURNING ssn",
            "INSERT INTO t SELECT ssn FROM customers",
            "CREATE TABLE t AS SELECT ssn FROM customers",
            "SELECT ssn INTO t FROM customers",
            "UPDATE customers SET name = ssn",
            "ALTER TABLE customers RENAME COLUMN ssn TO x",
            "DO $$ BEGIN RAISE NOTICE '%', (SELECT ssn FROM customers LIMIT 1); END $$",
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM customers'",
        ] {
            let reason = refused(sql).unwrap_or_else(|| panic!("{sql}: allowed"));
            assert!(reason.contains("masked column ssn"), "{sql}: {reason}");
        }
    }

    #[test]
    fn whole_rows_stars_out_of_place_renames_and_dynamic_sql_are_refused_for_any_mask() {
        for sql in [
            "SELECT c FROM customers c WHERE id = 1",
            "SELECT row_to_json(c) FROM customers c",
            "SELECT to_json(customers) FROM customers",
            "SELECT (c).ssn FROM customers c",
            "SELECT row_to_json(c.*) FROM customers c",
            "INSERT INTO t SELECT * FROM customers",
            "SELECT * FROM (SELECT * FROM customers) s(a, b, x)",
            "SELECT x FROM customers AS c(i, n, x)",
            "DELETE FROM customers RETURNING *",
            "DO $$ DECLARE v text; BEGIN EXECUTE format('SELECT %I FROM customers', 'ssn') INTO v; END $$",
        ] {
            let c = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let reason = c
                .exposures
                .check(&["card_number"])
                .expect_err(sql);
            assert!(reason.contains("refused on a service with masked columns"), "{sql}: {reason}");
            assert_eq!(c.exposures.check(&[]), Ok(()), "{sql}: no mask, no refusal");
        }
    }

    #[test]
    fn other_mask_names_are_not_refused() {
        let c = classify("SELECT upper(name) AS n FROM customers").unwrap();
        assert_eq!(c.exposures.check(&["ssn"]), Ok(()));
        assert!(c.exposures.check(&["NAME"]).is_err());
    }
}
