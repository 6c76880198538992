//! From pg_query's parse tree to [`StatementKind`]s.
//!
//! pg_query returns PostgreSQL's raw parse tree (the `gram.y` output, one
//! `RawStmt` per statement) as protobuf messages. Listing, for each of the
//! ~270 node types, which child fields may hold a statement would be long
//! and easy to get wrong, and a missed field is an evasion. So the tree is
//! walked generically through its serde form instead: every `Node`
//! serializes as `{"TypeName": {fields}}`, and each statement node is found
//! wherever it sits (CTEs, sub-selects, `EXPLAIN`, `PREPARE`, `COPY (query)`,
//! rule actions, `CREATE TABLE AS`, SQL-standard function bodies, schema
//! elements). Node type names are protobuf message names and field names
//! are protobuf field names, never SQL text; the tests pin every field read.
//!
//! `DO` bodies are PL/pgSQL, which the SQL grammar keeps as an opaque string.
//! They go through libpg_query's PL/pgSQL parser ([`pg_query::parse_plpgsql`])
//! and every embedded SQL statement is classified in turn; so is the
//! dynamic SQL of `EXECUTE` when it is a string literal (or a `||` chain of
//! them). See PostgreSQL docs §41.5 "Basic Statements" (PL/pgSQL).

use pg_query::protobuf::{
    a_const, node::Node as NodeEnum, AExprKind, CmdType, Node, OnConflictAction,
};
use pg_query::ParserOptions;
use serde_json::Value;

use super::{
    calls,
    masked::{self, Exposures},
    parser, Prepare, SqlError, StatementKind,
};

/// How deep `DO` blocks (and literal `EXECUTE`s inside them) are followed.
/// Deeper nesting makes the text unclassifiable, which denies it on a
/// service with deny rules.
const MAX_NESTING: u8 = 4;

/// What a walk finds. Lists are sets, unsorted.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Every kind, those of `PREPARE` bodies included.
    pub kinds: Vec<StatementKind>,
    /// The kinds that run when the text runs: all but `PREPARE` bodies.
    pub running: Vec<StatementKind>,
    /// Every function called (lower case, dotted when qualified).
    pub functions: Vec<String>,
    /// Each `PREPARE`, with what its body runs.
    pub prepares: Vec<Prepare>,
    /// The names that `EXECUTE` runs (`EXPLAIN ANALYZE EXECUTE` and
    /// `CREATE TABLE … AS EXECUTE` included).
    pub executes: Vec<String>,
}

impl Found {
    fn add_kind(&mut self, kind: StatementKind, running: bool) {
        add(&mut self.kinds, kind);
        if running {
            add(&mut self.running, kind);
        }
    }

    /// Adds what one statement or `PREPARE` body found; `running` when it
    /// runs now.
    fn merge(&mut self, other: Found, running: bool) {
        for kind in other.kinds {
            self.add_kind(kind, running && other.running.contains(&kind));
        }
        other
            .functions
            .into_iter()
            .for_each(|f| add(&mut self.functions, f));
        self.prepares.extend(other.prepares);
        self.executes.extend(other.executes);
    }
}

fn add<T: PartialEq>(set: &mut Vec<T>, item: T) {
    if !set.contains(&item) {
        set.push(item);
    }
}

/// Classifies every statement of `sql` into `found`, notes where columns
/// are read in ways masking cannot follow into `exposures`, and returns the
/// number of top-level statements.
pub(super) fn statements(
    sql: &str,
    found: &mut Found,
    exposures: &mut Exposures,
) -> Result<usize, SqlError> {
    Walk {
        out: found,
        exposures,
        nesting: 0,
    }
    .sql(sql)
}

struct Walk<'o> {
    out: &'o mut Found,
    exposures: &'o mut Exposures,
    /// `DO` blocks and routine bodies entered so far.
    nesting: u8,
}

impl Walk<'_> {
    fn push(&mut self, kind: StatementKind) {
        self.out.add_kind(kind, true);
    }

    fn sql(&mut self, sql: &str) -> Result<usize, SqlError> {
        let tree = parser::parse(sql, ParserOptions::DEFAULT)?;
        let stmts = &tree.protobuf.stmts;
        for raw in stmts {
            let json =
                serde_json::to_value(&raw.stmt).map_err(|e| SqlError::Parse(e.to_string()))?;
            // `{"node": {"SelectStmt": {…}}}`: exactly one type name per node.
            let Some((name, node)) = json
                .get("node")
                .and_then(Value::as_object)
                .and_then(|n| n.iter().next())
            else {
                continue;
            };
            masked::scan(&json, self.nesting > 0, self.exposures);
            let mut found = Found::default();
            let mut statement = Walk {
                out: &mut found,
                exposures: &mut *self.exposures,
                nesting: self.nesting,
            };
            statement.node(name, node, true)?;
            if name == "CreateFunctionStmt" {
                statement.routine(node, statement_text(sql, raw))?;
            }
            if name != "PrepareStmt" {
                statement.tree(node)?;
            }
            if found.kinds.is_empty() {
                found.add_kind(StatementKind::Other, true);
            }
            self.out.merge(found, true);
        }
        Ok(stmts.len())
    }

    /// Visits every node below `value` (a `PREPARE` walks its own body).
    fn tree(&mut self, value: &Value) -> Result<(), SqlError> {
        match value {
            Value::Array(items) => items.iter().try_for_each(|item| self.tree(item)),
            Value::Object(map) => map.iter().try_for_each(|(key, child)| {
                self.node(key, child, false)?;
                match key.as_str() {
                    "PrepareStmt" => Ok(()),
                    _ => self.tree(child),
                }
            }),
            _ => Ok(()),
        }
    }

    /// `PREPARE name AS stmt`: `PREPARE` runs now, `stmt` only when
    /// executed. Its kinds count for `deny` (not for `approve`) and are
    /// noted for the `EXECUTE`s of `name`.
    fn prepare(&mut self, node: &Value) -> Result<(), SqlError> {
        self.push(StatementKind::Prepare);
        let mut body = Found::default();
        Walk {
            out: &mut body,
            exposures: &mut *self.exposures,
            nesting: self.nesting,
        }
        .tree(&node["query"])?;
        if body.kinds.is_empty() {
            body.add_kind(StatementKind::Other, true);
        }
        body.kinds.sort_unstable();
        let prepare = Prepare {
            name: node["name"].as_str().unwrap_or_default().to_string(),
            kinds: body.kinds.clone(),
            functions: body.functions.clone(),
        };
        self.out.merge(body, false);
        self.out.prepares.push(prepare);
        Ok(())
    }

    /// The kinds one node contributes. `name` is a node type name, or a
    /// field name (snake_case) that matches nothing here.
    fn node(&mut self, name: &str, node: &Value, top: bool) -> Result<(), SqlError> {
        use StatementKind as K;
        match name {
            "SelectStmt" => {
                if !is_absent(node, "into_clause") {
                    self.push(K::Create); // SELECT … INTO new_table
                }
                // A bare VALUES list feeding an INSERT reads nothing.
                if top || is_empty_list(node, "values_lists") {
                    self.push(K::Select);
                }
            }
            "InsertStmt" => {
                self.push(K::Insert);
                if int(&node["on_conflict_clause"], "action")
                    == Some(OnConflictAction::OnconflictUpdate as i64)
                {
                    self.push(K::Update);
                }
            }
            "UpdateStmt" => self.write(node, K::Update, K::UpdateWithoutWhere),
            "DeleteStmt" => self.write(node, K::Delete, K::DeleteWithoutWhere),
            "MergeWhenClause" => {
                match int(node, "command_type").and_then(|c| CmdType::try_from(c as i32).ok()) {
                    Some(CmdType::CmdUpdate) => self.push(K::Update),
                    Some(CmdType::CmdDelete) => self.push(K::Delete),
                    Some(CmdType::CmdInsert) => self.push(K::Insert),
                    _ => {}
                }
            }
            "CopyStmt" => {
                self.push(K::Copy);
                let (from, program) = (flag(node, "is_from"), flag(node, "is_program"));
                if !from {
                    self.push(K::CopyTo);
                }
                match (program, from) {
                    (true, true) => self.push(K::CopyFromProgram),
                    (true, false) => self.push(K::CopyToProgram),
                    _ => {}
                }
            }
            "GrantStmt" | "GrantRoleStmt" => self.push(if flag(node, "is_grant") {
                K::Grant
            } else {
                K::Revoke
            }),
            "VacuumStmt" => self.push(if flag(node, "is_vacuumcmd") {
                K::Vacuum
            } else {
                K::Analyze
            }),
            "DoStmt" => {
                self.push(K::Do);
                self.do_block(node)?;
            }
            // Also OTHER, as before COMMENT had a kind of its own.
            "CommentStmt" => {
                self.push(K::Comment);
                self.push(K::Other);
            }
            "PrepareStmt" => self.prepare(node)?,
            "ExecuteStmt" => {
                self.push(K::Execute);
                let name = node["name"].as_str().unwrap_or_default();
                add(&mut self.out.executes, name.to_string());
            }
            // The one `FuncCall` field that is no `Node`.
            "CallStmt" => {
                self.push(K::Call);
                self.node("FuncCall", &node["funccall"], false)?;
            }
            "FuncCall" => {
                let name = calls::name(node);
                if calls::is_dangerous(&name) {
                    self.push(K::DangerousFunctions);
                }
                add(&mut self.out.functions, name);
            }
            _ => {
                if let Some(kind) = kind_by_name(name) {
                    self.push(kind);
                }
            }
        }
        Ok(())
    }

    /// UPDATE / DELETE, and the `_WITHOUT_WHERE` kind when there is no WHERE
    /// clause (`WHERE CURRENT OF` is a `CurrentOfExpr`, so it counts).
    fn write(&mut self, node: &Value, kind: StatementKind, without_where: StatementKind) {
        self.push(kind);
        if is_absent(node, "where_clause") {
            self.push(without_where);
        }
    }

    /// `DO [LANGUAGE l] 'body'`: the `args` are `DefElem`s named `as` and
    /// `language`. Only PL/pgSQL (the default) bodies can be looked into;
    /// one that cannot be parsed is an error, as it would be on the server,
    /// and so is a body in any other language (`plperl`, `plpython3u`…),
    /// whose SQL Sluice cannot see.
    fn do_block(&mut self, node: &Value) -> Result<(), SqlError> {
        let (body, language) = definition(&node["args"], "/arg/node/String/sval");
        let Some(body) = body else {
            return Ok(());
        };
        match language.unwrap_or("plpgsql") {
            l if l.eq_ignore_ascii_case("plpgsql") => self
                .nested("DO block")?
                .plpgsql_text(&plpgsql_function(body, "void"), "DO block"),
            other => Err(unreadable("a DO block", other)),
        }
    }

    /// `CREATE [OR REPLACE] FUNCTION | PROCEDURE` (`text` is the whole
    /// statement): besides `CREATE`, the kinds of what the body runs.
    /// - a SQL-standard body (`BEGIN ATOMIC … END`, `RETURN expr`) is a
    ///   parse tree in `sql_body`, which [`Walk::tree`] visits anyway;
    /// - `LANGUAGE sql AS 'text'`: the text is parsed and classified;
    /// - `LANGUAGE plpgsql AS 'text'`: like a `DO` block, through
    ///   libpg_query's PL/pgSQL parser, which takes the whole statement so
    ///   that parameters and the return type are known;
    /// - any other language (`c`, `internal`, `plperl`, `plpython3u`…) is
    ///   an error: what it runs cannot be seen, so a service with deny rules
    ///   refuses it under [`super::UNPARSEABLE`].
    ///
    /// See PostgreSQL docs "CREATE FUNCTION" and §36.5 "Query Language (SQL)
    /// Functions".
    fn routine(&mut self, node: &Value, text: &str) -> Result<(), SqlError> {
        if !is_absent(node, "sql_body") {
            return Ok(());
        }
        let (body, language) =
            definition(&node["options"], "/arg/node/List/items/0/node/String/sval");
        let (Some(body), Some(language)) = (body, language) else {
            // The server refuses a routine without a body or a language.
            return Ok(());
        };
        const WHAT: &str = "function body";
        match language {
            l if l.eq_ignore_ascii_case("sql") => self
                .nested(WHAT)?
                .sql(body)
                .map(drop)
                .map_err(|e| in_body(e, WHAT)),
            l if l.eq_ignore_ascii_case("plpgsql") => {
                // libpg_query writes broken JSON for a trigger function's
                // tree; a trigger function has no parameters, so its body
                // parses the same in a plain function returning a value.
                let text = match returns_trigger(node) {
                    true => std::borrow::Cow::Owned(plpgsql_function(body, "int")),
                    false => std::borrow::Cow::Borrowed(text),
                };
                self.nested(WHAT)?.plpgsql_text(&text, WHAT)
            }
            other => Err(unreadable("a function body", other)),
        }
    }

    /// A walk one `DO` block or routine body deeper, writing to the same
    /// set; an error beyond [`MAX_NESTING`].
    fn nested(&mut self, what: &str) -> Result<Walk<'_>, SqlError> {
        if self.nesting >= MAX_NESTING {
            return Err(SqlError::Parse(format!(
                "a {what} nested more than {MAX_NESTING} deep is not classified"
            )));
        }
        Ok(Walk {
            out: &mut *self.out,
            exposures: &mut *self.exposures,
            nesting: self.nesting + 1,
        })
    }

    /// Parses `function` (a `CREATE FUNCTION … LANGUAGE plpgsql` text) with
    /// the PL/pgSQL parser and classifies the SQL inside.
    fn plpgsql_text(&mut self, function: &str, what: &str) -> Result<(), SqlError> {
        let functions = parser::parse_plpgsql(function).map_err(|e| in_body(e, what))?;
        self.plpgsql(&functions)
    }

    /// Visits a PL/pgSQL tree (libpg_query's JSON): every `PLpgSQL_expr`
    /// parsed as a whole statement (`parseMode` 0: plain SQL statements,
    /// `PERFORM`, `FOR … IN query`, `RETURN QUERY`, `OPEN … FOR query`), and
    /// the query strings of dynamic SQL.
    fn plpgsql(&mut self, value: &Value) -> Result<(), SqlError> {
        match value {
            Value::Array(items) => items.iter().try_for_each(|item| self.plpgsql(item)),
            Value::Object(map) => map.iter().try_for_each(|(key, child)| {
                match key.as_str() {
                    "PLpgSQL_expr" => {
                        let mode = child.get("parseMode").and_then(Value::as_i64).unwrap_or(0);
                        let query = child["query"].as_str().unwrap_or_default();
                        if mode == i64::from(ParserOptions::DEFAULT.bits()) {
                            self.sql(query)?;
                        } else {
                            self.expression(query, mode);
                        }
                    }
                    "PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors" => {
                        self.dynamic(child, "/query")?
                    }
                    "PLpgSQL_stmt_open" | "PLpgSQL_stmt_return_query" => {
                        self.dynamic(child, "/dynquery")?
                    }
                    _ => {}
                }
                self.plpgsql(child)
            }),
            _ => Ok(()),
        }
    }

    /// Dynamic SQL (`EXECUTE expr`): classified when `expr` is a constant
    /// string. Anything else is only known when it runs, which masking
    /// notes as an exposure.
    fn dynamic(&mut self, stmt: &Value, field: &str) -> Result<(), SqlError> {
        let expr = stmt
            .pointer(&format!("{field}/PLpgSQL_expr/query"))
            .and_then(Value::as_str);
        match expr.map(|e| (e, literal_string(e))) {
            Some((_, Some(sql))) => self.sql(&sql).map(drop),
            Some((_, None)) => {
                self.exposures.dynamic_sql();
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The function calls below `value`, and nothing else (a PL/pgSQL
    /// expression runs no statement, but can call functions).
    fn calls(&mut self, value: &Value) {
        match value {
            Value::Array(items) => items.iter().for_each(|item| self.calls(item)),
            Value::Object(map) => map.iter().for_each(|(key, child)| {
                if key == "FuncCall" {
                    // Cannot fail: FuncCall only adds a function.
                    let _ = self.node(key, child, false);
                }
                self.calls(child);
            }),
            _ => {}
        }
    }

    /// A PL/pgSQL expression (`x := …`, `IF …`, `RAISE … , …`), parsed in
    /// its own mode: it runs no statement of its own kind, but may read a
    /// masked column or call a function. One that cannot be parsed is an
    /// exposure.
    fn expression(&mut self, text: &str, mode: i64) {
        let parsed = i32::try_from(mode)
            .ok()
            .and_then(|m| parser::parse(text, ParserOptions::from(m)).ok());
        match parsed {
            Some(tree) => {
                for raw in &tree.protobuf.stmts {
                    match serde_json::to_value(&raw.stmt) {
                        Ok(json) => {
                            masked::scan(&json, true, self.exposures);
                            self.calls(&json);
                        }
                        Err(_) => self.exposures.unreadable_expression(),
                    }
                }
            }
            None => self.exposures.unreadable_expression(),
        }
    }
}

/// The `as` (body) and `language` of a `DO` or `CREATE FUNCTION` option
/// list (`DefElem`s); `body_at` points at the body string inside the
/// `DefElem` (a `String` for `DO`, the first item of a `List` for
/// functions, whose second item is a C symbol name).
fn definition<'v>(options: &'v Value, body_at: &str) -> (Option<&'v str>, Option<&'v str>) {
    let (mut body, mut language) = (None, None);
    for option in options.as_array().into_iter().flatten() {
        let Some(def) = option.pointer("/node/DefElem") else {
            continue;
        };
        match def["defname"].as_str() {
            Some("as") => body = def.pointer(body_at).and_then(Value::as_str),
            Some("language") => {
                language = def.pointer("/arg/node/String/sval").and_then(Value::as_str)
            }
            _ => {}
        }
    }
    (body, language)
}

/// The error for code in a language whose SQL cannot be seen.
fn unreadable(what: &str, language: &str) -> SqlError {
    SqlError::Parse(format!(
        "{what} in LANGUAGE {language} cannot be classified: only sql and plpgsql bodies can be read"
    ))
}

/// A parse error inside a body, prefixed with where it is.
fn in_body(e: SqlError, what: &str) -> SqlError {
    match e {
        SqlError::Parse(message) if message.starts_with("in ") => SqlError::Parse(message),
        SqlError::Parse(message) => SqlError::Parse(format!("in {what}: {message}")),
    }
}

/// The text of one top-level statement of `sql` (its `RawStmt` location
/// and length, in bytes; a length of 0 means "to the end").
fn statement_text<'s>(sql: &'s str, raw: &pg_query::protobuf::RawStmt) -> &'s str {
    let start = usize::try_from(raw.stmt_location).unwrap_or(0);
    let end = match usize::try_from(raw.stmt_len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(len) => start.saturating_add(len),
    };
    sql.get(start..end).unwrap_or(sql)
}

/// Statement kinds decided by the node type alone.
fn kind_by_name(name: &str) -> Option<StatementKind> {
    use StatementKind as K;
    let stmt = |prefix: &str| name.starts_with(prefix) && name.ends_with("Stmt");
    Some(match name {
        "MergeStmt" => K::Merge,
        "TruncateStmt" => K::Truncate,
        "RenameStmt" | "ReassignOwnedStmt" => K::Alter,
        "ViewStmt"
        | "IndexStmt"
        | "RuleStmt"
        | "DefineStmt"
        | "CompositeTypeStmt"
        | "ImportForeignSchemaStmt" => K::Create,
        "VariableSetStmt" | "ConstraintsSetStmt" => K::Set,
        "VariableShowStmt" => K::Show,
        "TransactionStmt" => K::Transaction,
        "ExplainStmt" => K::Explain,
        "DeallocateStmt" => K::Deallocate,
        "ListenStmt" | "UnlistenStmt" => K::Listen,
        "NotifyStmt" => K::Notify,
        "LockStmt" => K::Lock,
        // CreateStmt, CreatedbStmt, CreateFunctionStmt, AlterTableStmt,
        // AlterSystemStmt, DropStmt, DropdbStmt, DropRoleStmt, DropOwnedStmt…
        _ if stmt("Create") => K::Create,
        _ if stmt("Alter") => K::Alter,
        _ if stmt("Drop") => K::Drop,
        _ => return None,
    })
}

/// A PL/pgSQL function returning `returns` with `body`, for the PL/pgSQL
/// parser: `DO` runs its body as an anonymous `void` function. The body is
/// dollar-quoted with a tag it does not contain, so it is carried byte for
/// byte.
fn plpgsql_function(body: &str, returns: &str) -> String {
    let mut tag = String::from("$sluice_do$");
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$sluice_do{n}$");
    }
    format!("CREATE FUNCTION sluice_do() RETURNS {returns} LANGUAGE plpgsql AS {tag}{body}{tag}")
}

/// A `CreateFunctionStmt` whose return type is `trigger` or
/// `event_trigger` (schema-qualified or not).
fn returns_trigger(node: &Value) -> bool {
    let names = node.pointer("/return_type/names").and_then(Value::as_array);
    let last = names
        .and_then(|n| n.last())
        .and_then(|n| n.pointer("/node/String/sval"))
        .and_then(Value::as_str);
    matches!(last, Some("trigger" | "event_trigger"))
}

/// The value of a PL/pgSQL expression that is a string constant: a literal
/// in any quoting, a cast of one, or a `||` chain of them.
fn literal_string(expr: &str) -> Option<String> {
    let tree = parser::parse(expr, ParserOptions::PLPGSQL_EXPR).ok()?;
    let [raw] = tree.protobuf.stmts.as_slice() else {
        return None;
    };
    // An expression parses as a target list with nothing else around it.
    let NodeEnum::SelectStmt(select) = raw.stmt.as_ref()?.node.as_ref()? else {
        return None;
    };
    if !select.from_clause.is_empty() || select.where_clause.is_some() {
        return None;
    }
    let [target] = select.target_list.as_slice() else {
        return None;
    };
    let NodeEnum::ResTarget(target) = target.node.as_ref()? else {
        return None;
    };
    string_constant(target.val.as_deref()?)
}

fn string_constant(node: &Node) -> Option<String> {
    match node.node.as_ref()? {
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            a_const::Val::Sval(s) => Some(s.sval.clone()),
            _ => None,
        },
        NodeEnum::TypeCast(cast) => string_constant(cast.arg.as_deref()?),
        NodeEnum::AExpr(e) if e.kind == AExprKind::AexprOp as i32 && is_concat(&e.name) => {
            Some(string_constant(e.lexpr.as_deref()?)? + &string_constant(e.rexpr.as_deref()?)?)
        }
        _ => None,
    }
}

fn is_concat(operator: &[Node]) -> bool {
    matches!(operator, [Node { node: Some(NodeEnum::String(op)) }] if op.sval == "||")
}

/// A message or node field that is unset (`null`) or missing.
fn is_absent(node: &Value, field: &str) -> bool {
    node.get(field).is_none_or(Value::is_null)
}

fn is_empty_list(node: &Value, field: &str) -> bool {
    node.get(field)
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

fn flag(node: &Value, field: &str) -> bool {
    node.get(field).and_then(Value::as_bool).unwrap_or(false)
}

fn int(node: &Value, field: &str) -> Option<i64> {
    node.get(field).and_then(Value::as_i64)
}

#[cfg(test)]
mod tests;
