use super::super::{classify, SqlError, StatementKind};

/// The kind names of `sql`, in declaration order.
fn kinds(sql: &str) -> Vec<&'static str> {
    let classified = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    classified.kinds.iter().map(|k| k.as_str()).collect()
}

#[test]
fn drop_is_found_whatever_the_spelling() {
    for sql in [
        "DROP TABLE customers",
        "drop/**/table customers",
        "/* x */ DrOp TaBlE \"customers\"",
        "DROP -- comment\n\tTABLE public.customers;",
        "DROP /* nested /* comment */ */ TABLE customers",
    ] {
        assert_eq!(kinds(sql), ["DROP"], "{sql}");
    }
}

#[test]
fn sql_inside_strings_is_data_not_a_statement() {
    assert_eq!(kinds("SELECT 'DROP TABLE t'"), ["SELECT"]);
    assert_eq!(
        kinds("SELECT $$DELETE FROM t$$, $q$TRUNCATE t$q$"),
        ["SELECT"]
    );
}

#[test]
fn every_statement_of_a_multi_statement_string_counts() {
    let c = classify("SELECT 1; DROP TABLE t").unwrap();
    assert_eq!(c.statements, 2);
    assert_eq!(
        c.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["SELECT", "DROP"]
    );
    let empty = classify("  -- nothing to run\n").unwrap();
    assert_eq!((empty.statements, empty.kinds.len()), (0, 0));
}

#[test]
fn a_delete_hidden_in_a_cte_is_found() {
    let found = kinds("WITH d AS (DELETE FROM customers RETURNING *) SELECT 1");
    assert!(
        found.contains(&"DELETE") && found.contains(&"DELETE_WITHOUT_WHERE"),
        "{found:?}"
    );
    assert!(
        kinds("(WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u) UNION SELECT 1")
            .contains(&"UPDATE_WITHOUT_WHERE")
    );
}

#[test]
fn a_where_clause_is_what_separates_delete_from_delete_without_where() {
    assert_eq!(kinds("DELETE FROM t WHERE id = 1"), ["DELETE"]);
    assert_eq!(kinds("DELETE FROM t"), ["DELETE", "DELETE_WITHOUT_WHERE"]);
    assert_eq!(
        kinds("UPDATE t SET a = 1"),
        ["UPDATE", "UPDATE_WITHOUT_WHERE"]
    );
    assert_eq!(kinds("UPDATE t SET a = 1 WHERE CURRENT OF c"), ["UPDATE"]);
    assert_eq!(kinds("DELETE FROM t WHERE CURRENT OF c"), ["DELETE"]);
    assert_eq!(
        kinds("DELETE FROM t WHERE id IN (SELECT id FROM u)"),
        ["SELECT", "DELETE"]
    );
}

#[test]
fn bind_parameters_parse_like_values() {
    assert_eq!(kinds("SELECT $1"), ["SELECT"]);
    assert_eq!(
        kinds("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"),
        ["UPDATE"]
    );
}

#[test]
fn copy_reports_direction_and_programs() {
    assert_eq!(
        kinds("COPY t TO PROGRAM 'cat'"),
        ["COPY", "COPY_TO", "COPY_TO_PROGRAM"]
    );
    assert_eq!(
        kinds("COPY t FROM PROGRAM 'curl -s x'"),
        ["COPY", "COPY_FROM_PROGRAM"]
    );
    assert_eq!(
        kinds("COPY (SELECT * FROM t) TO STDOUT"),
        ["SELECT", "COPY", "COPY_TO"]
    );
    assert_eq!(kinds("COPY t FROM STDIN"), ["COPY"]);
    assert!(kinds("COPY (DELETE FROM t RETURNING *) TO STDOUT").contains(&"DELETE_WITHOUT_WHERE"));
}

#[test]
fn explain_and_prepare_carry_the_statement_they_wrap() {
    assert_eq!(
        kinds("EXPLAIN ANALYZE DELETE FROM t"),
        ["DELETE", "DELETE_WITHOUT_WHERE", "EXPLAIN"]
    );
    assert_eq!(
        kinds("PREPARE p AS DELETE FROM t"),
        ["DELETE", "DELETE_WITHOUT_WHERE", "PREPARE"]
    );
    assert_eq!(kinds("EXECUTE p(1)"), ["EXECUTE"]);
    assert_eq!(kinds("DEALLOCATE ALL"), ["DEALLOCATE"]);
}

#[test]
fn a_prepare_body_runs_later_and_executes_are_found_wherever_they_sit() {
    let c = classify("PREPARE p (int) AS DELETE FROM t WHERE id = $1; SELECT 1").unwrap();
    assert_eq!(c.running, [StatementKind::Select, StatementKind::Prepare]);
    assert_eq!(c.prepares.len(), 1);
    assert_eq!(
        (c.prepares[0].name.as_str(), c.prepares[0].kinds.as_slice()),
        ("p", [StatementKind::Delete].as_slice())
    );
    let c = classify(
        "EXECUTE a(1); EXPLAIN ANALYZE EXECUTE b; CREATE TABLE x AS EXECUTE c; DEALLOCATE a",
    )
    .unwrap();
    assert_eq!(c.executes, ["a", "b", "c"]);
    let c = classify("DO $$ BEGIN EXECUTE 'PREPARE q AS DELETE FROM t'; END $$").unwrap();
    assert_eq!(c.prepares[0].name, "q");
    assert!(c.kinds.contains(&StatementKind::Delete));
    assert!(!c.running.contains(&StatementKind::Delete));
}

#[test]
fn function_calls_are_found_anywhere_in_a_statement() {
    let functions = |sql: &str| {
        classify(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .functions
    };
    for (sql, called) in [
        ("SELECT lo_unlink(1)", "lo_unlink"),
        (
            "SELECT 1 WHERE pg_catalog.LO_UNLINK(1) = 1",
            "pg_catalog.lo_unlink",
        ),
        (
            "WITH x AS (SELECT pg_terminate_backend(7)) SELECT * FROM x",
            "pg_terminate_backend",
        ),
        ("SELECT (SELECT pg_cancel_backend(7))", "pg_cancel_backend"),
        (
            "SELECT * FROM dblink_exec('x', 'DROP TABLE t')",
            "dblink_exec",
        ),
        ("CALL set_config('a', 'b', false)", "set_config"),
        ("CREATE TABLE t (a int DEFAULT lo_unlink(1))", "lo_unlink"),
        ("DO $$ BEGIN PERFORM lo_unlink(1); END $$", "lo_unlink"),
        (
            "DO $$ DECLARE x int; BEGIN x := lo_unlink(1); END $$",
            "lo_unlink",
        ),
        (
            "DO $$ BEGIN IF pg_reload_conf() THEN NULL; END IF; END $$",
            "pg_reload_conf",
        ),
        ("PREPARE p AS SELECT lo_unlink($1)", "lo_unlink"),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT lo_unlink(1)'",
            "lo_unlink",
        ),
    ] {
        assert!(
            functions(sql).contains(&called.to_string()),
            "{sql}: {:?}",
            functions(sql)
        );
        assert!(kinds(sql).contains(&"DANGEROUS_FUNCTIONS"), "{sql}");
    }
    assert_eq!(functions("SELECT count(*) FROM t"), ["count"]);
    assert!(!kinds("SELECT count(*), now() FROM t").contains(&"DANGEROUS_FUNCTIONS"));
    assert!(!kinds("SELECT 'lo_unlink(1)'").contains(&"DANGEROUS_FUNCTIONS"));
}

#[test]
fn garbage_is_a_parse_error_with_the_parsers_message() {
    let Err(SqlError::Parse(message)) = classify("selec * frm t") else {
        panic!("parsed garbage")
    };
    assert!(message.contains("syntax error at or near"), "{message}");
    assert!(classify("SELECT 1\0; DROP TABLE t").is_err());
}

#[test]
fn rule_actions_and_function_bodies_are_looked_into() {
    assert_eq!(
        kinds("CREATE RULE r AS ON SELECT TO t DO INSTEAD SELECT * FROM u"),
        ["SELECT", "CREATE"]
    );
    assert_eq!(
        kinds("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u"),
        ["DELETE", "DELETE_WITHOUT_WHERE", "CREATE"]
    );
    let body = kinds(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END",
    );
    assert!(
        body.contains(&"CREATE") && body.contains(&"DELETE_WITHOUT_WHERE"),
        "{body:?}"
    );
}

#[test]
fn ddl_and_privileges() {
    for (sql, expected) in [
        ("GRANT ALL ON t TO x", "GRANT"),
        ("REVOKE ALL ON t FROM x", "REVOKE"),
        ("GRANT admin TO x", "GRANT"),
        ("REVOKE admin FROM x", "REVOKE"),
        ("ALTER TABLE t ADD c int", "ALTER"),
        ("ALTER TABLE t RENAME TO u", "ALTER"),
        ("ALTER SYSTEM SET work_mem = '1GB'", "ALTER"),
        ("ALTER ROLE x SET search_path = y", "ALTER"),
        ("REASSIGN OWNED BY a TO b", "ALTER"),
        ("TRUNCATE t", "TRUNCATE"),
        ("DROP DATABASE d", "DROP"),
        ("DROP ROLE r", "DROP"),
        ("DROP OWNED BY r", "DROP"),
        ("DROP INDEX CONCURRENTLY i", "DROP"),
        ("CREATE TABLE t (id int)", "CREATE"),
        ("CREATE INDEX i ON t (id)", "CREATE"),
        ("CREATE DATABASE d", "CREATE"),
        ("CREATE TYPE mood AS ENUM ('ok')", "CREATE"),
    ] {
        assert_eq!(kinds(sql), [expected], "{sql}");
    }
    assert_eq!(kinds("CREATE VIEW v AS SELECT 1"), ["SELECT", "CREATE"]);
    assert_eq!(
        kinds("CREATE TABLE t2 AS SELECT * FROM t"),
        ["SELECT", "CREATE"]
    );
    assert_eq!(kinds("SELECT * INTO t2 FROM t"), ["SELECT", "CREATE"]);
}

#[test]
fn inserts_upserts_and_merges() {
    assert_eq!(kinds("INSERT INTO t VALUES (1), (2)"), ["INSERT"]);
    assert_eq!(kinds("INSERT INTO t SELECT * FROM u"), ["SELECT", "INSERT"]);
    assert_eq!(
        kinds("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING"),
        ["INSERT"]
    );
    assert_eq!(
        kinds("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2"),
        ["INSERT", "UPDATE"]
    );
    assert_eq!(kinds("VALUES (1)"), ["SELECT"]);
    assert_eq!(
        kinds("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (s.id)"),
        ["INSERT", "DELETE", "MERGE"]
    );
}

#[test]
fn session_and_maintenance_commands() {
    for (sql, expected) in [
        ("BEGIN", "TRANSACTION"),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "TRANSACTION",
        ),
        ("COMMIT", "TRANSACTION"),
        ("ROLLBACK TO SAVEPOINT s", "TRANSACTION"),
        ("SET search_path = x", "SET"),
        ("RESET ALL", "SET"),
        ("SET ROLE admin", "SET"),
        ("SHOW work_mem", "SHOW"),
        ("CALL p(1)", "CALL"),
        ("LISTEN c", "LISTEN"),
        ("UNLISTEN *", "LISTEN"),
        ("NOTIFY c, 'x'", "NOTIFY"),
        ("VACUUM (ANALYZE) t", "VACUUM"),
        ("ANALYZE t", "ANALYZE"),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "LOCK"),
        ("CHECKPOINT", "OTHER"),
        ("DECLARE c CURSOR FOR SELECT 1", "SELECT"),
    ] {
        assert_eq!(kinds(sql), [expected], "{sql}");
    }
    // OTHER too, as before COMMENT had a kind of its own.
    for sql in [
        "COMMENT ON TABLE t IS 'x'",
        "COMMENT ON COLUMN t.ssn IS NULL",
    ] {
        assert_eq!(kinds(sql), ["COMMENT", "OTHER"], "{sql}");
    }
}

#[test]
fn do_blocks_report_do_and_the_sql_inside() {
    assert_eq!(
        kinds("DO $$ BEGIN EXECUTE 'DROP TABLE customers'; END $$"),
        ["DROP", "DO"]
    );
    assert_eq!(
        kinds("do $$ begin execute 'DROP TABLE ' || 'customers'; end $$"),
        ["DROP", "DO"]
    );
    assert_eq!(
        kinds("DO $$ BEGIN DELETE FROM customers; END $$"),
        ["DELETE", "DELETE_WITHOUT_WHERE", "DO"]
    );
    assert_eq!(
        kinds("DO 'DECLARE r record; BEGIN FOR r IN SELECT id FROM t LOOP UPDATE t SET a = 1 WHERE id = r.id; END LOOP; END'"),
        ["SELECT", "UPDATE", "DO"]
    );
    // Nested: a DO block that EXECUTEs a DO block.
    assert_eq!(
        kinds("DO $a$ BEGIN EXECUTE $b$ DO $c$ BEGIN EXECUTE 'TRUNCATE t'; END $c$ $b$; END $a$"),
        ["TRUNCATE", "DO"]
    );
    // The body is re-quoted with a tag it does not contain.
    assert_eq!(
        kinds("DO $q$ BEGIN PERFORM '$sluice_do$'; DROP TABLE t; END $q$"),
        ["SELECT", "DROP", "DO"]
    );
}

#[test]
fn do_blocks_whose_sql_is_only_known_at_run_time_report_do_only() {
    assert_eq!(
        kinds("DO $$ BEGIN EXECUTE format('DROP TABLE %I', 'customers'); END $$"),
        ["DO"]
    );
    assert_eq!(
        kinds("DO $$ DECLARE q text := 'DROP TABLE t'; BEGIN EXECUTE q; END $$"),
        ["DO"]
    );
}

#[test]
fn code_in_a_language_sluice_cannot_read_is_unclassifiable() {
    for sql in [
        "DO LANGUAGE plpython3u $$ plpy.execute('DROP TABLE t') $$",
        "DO LANGUAGE plperl $$ spi_exec_query('DROP TABLE t') $$",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpython3u AS $$ plpy.execute('DROP TABLE t') $$",
        "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'lib.so', 'f'",
    ] {
        let Err(SqlError::Parse(message)) = classify(sql) else {
            panic!("{sql}: classified")
        };
        assert!(message.contains("cannot be classified"), "{message}");
    }
}

#[test]
fn a_function_or_procedure_reports_create_and_what_its_body_runs() {
    for (sql, expected) in [
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN DROP TABLE t; END $$",
            &["DROP", "CREATE"][..],
        ),
        (
            "create or replace function f(a int, b text) returns setof customers language plpgsql as $f$ begin delete from t where id = a; return query select * from customers; end $f$",
            &["SELECT", "DELETE", "CREATE"],
        ),
        (
            "CREATE FUNCTION g() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'TRUNCATE t'; RETURN NEW; END $$",
            &["TRUNCATE", "CREATE"],
        ),
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DROP TABLE customers'",
            &["DROP", "CREATE"],
        ),
        (
            "CREATE FUNCTION f(int) RETURNS int AS $$ DELETE FROM t WHERE id = $1; SELECT 1 $$ LANGUAGE SQL",
            &["SELECT", "DELETE", "CREATE"],
        ),
        (
            "CREATE PROCEDURE p() LANGUAGE sql AS $$ TRUNCATE t $$",
            &["TRUNCATE", "CREATE"],
        ),
        (
            "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN ALTER TABLE t ADD c int; COMMIT; END $$",
            &["ALTER", "CREATE"],
        ),
        (
            "CREATE PROCEDURE p() BEGIN ATOMIC DROP TABLE t; END",
            &["DROP", "CREATE"],
        ),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN (SELECT count(*) FROM t)",
            &["SELECT", "CREATE"],
        ),
        // A function body that creates a function: followed too.
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $a$ CREATE FUNCTION g() RETURNS void LANGUAGE plpgsql AS $b$ BEGIN DROP TABLE t; END $b$ $a$",
            &["DROP", "CREATE"],
        ),
        // A DO block that creates a function.
        (
            "DO $$ BEGIN EXECUTE $f$ CREATE FUNCTION g() RETURNS void LANGUAGE sql AS 'DROP TABLE t' $f$; END $$",
            &["DROP", "CREATE", "DO"],
        ),
    ] {
        assert_eq!(kinds(sql), expected, "{sql}");
    }
    // Only the statement that is the function is handed to the
    // PL/pgSQL parser.
    assert_eq!(
        kinds("SELECT 1; CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN DROP TABLE t; END $$; SELECT 2"),
        ["SELECT", "DROP", "CREATE"]
    );
}

#[test]
fn a_function_body_that_cannot_be_parsed_is_unclassifiable() {
    for sql in [
        "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DROPP TABLE t'",
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN not plpgsql END $$",
    ] {
        let Err(SqlError::Parse(message)) = classify(sql) else {
            panic!("{sql}: classified")
        };
        assert!(message.starts_with("in function body: "), "{message}");
    }
}

#[test]
fn do_blocks_that_cannot_be_read_are_unclassifiable() {
    let Err(SqlError::Parse(message)) = classify("DO $$ BEGIN this is not plpgsql END $$") else {
        panic!("broken DO body classified")
    };
    assert!(message.starts_with("in DO block: "), "{message}");
    assert!(classify("DO $$ BEGIN EXECUTE 'SELEC 1'; END $$").is_err());
    // Nesting is followed four deep, and refused beyond.
    let nested = |depth: usize| {
        (0..depth).fold("DROP TABLE t".to_string(), |sql, i| {
            format!("DO $q{i}$ BEGIN {sql}; END $q{i}$")
        })
    };
    assert_eq!(kinds(&nested(4)), ["DROP", "DO"]);
    let Err(SqlError::Parse(message)) = classify(&nested(5)) else {
        panic!("DO nesting unbounded")
    };
    assert!(message.contains("nested"), "{message}");
}
