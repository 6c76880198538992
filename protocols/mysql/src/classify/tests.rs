use super::*;

fn kinds(sql: &str) -> Vec<&'static str> {
    classify(sql, Escapes::Backslash)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .kinds
        .into_iter()
        .map(StatementKind::as_str)
        .collect()
}

fn unparseable(sql: &str) -> bool {
    classify(sql, Escapes::Backslash).is_err()
}

#[test]
fn guardrail_kinds_of_the_issue() {
    assert_eq!(kinds("DROP TABLE customers"), ["DROP"]);
    assert_eq!(kinds("/*!50000 DROP TABLE customers */"), ["DROP"]);
    assert_eq!(kinds("SELECT 1; DROP TABLE customers"), ["SELECT", "DROP"]);
    assert_eq!(
        kinds("DELETE FROM customers"),
        ["DELETE", "DELETE_WITHOUT_WHERE"]
    );
    assert_eq!(kinds("TRUNCATE customers"), ["TRUNCATE"]);
    assert_eq!(kinds("TRUNCATE TABLE customers"), ["TRUNCATE"]);
}

#[test]
fn where_clauses_decide_without_where() {
    assert_eq!(kinds("DELETE FROM customers WHERE id = 1"), ["DELETE"]);
    assert_eq!(
        kinds("UPDATE customers SET name = 'x'"),
        ["UPDATE", "UPDATE_WITHOUT_WHERE"]
    );
    assert_eq!(
        kinds("UPDATE customers SET name = 'x' WHERE id = 2"),
        ["UPDATE"]
    );
    assert_eq!(
        kinds("DELETE FROM customers ORDER BY id LIMIT 1"),
        ["DELETE", "DELETE_WITHOUT_WHERE"]
    );
}

#[test]
fn executable_comments_are_code_in_every_form() {
    for sql in [
        "/*!DROP TABLE customers*/",
        "/*!50000DROP TABLE customers*/",
        "/*!100100 DROP TABLE customers */",
        "/*M!100100 DROP TABLE customers */",
        "SELECT 1 /*!50000 ; DROP TABLE customers */",
        "/*!50000 DROP */ TABLE customers",
    ] {
        let k = classify(sql, Escapes::Backslash).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(k.kinds.contains(&StatementKind::Drop), "{sql}: {k:?}");
    }
    // A comment splits a word in two for the server as for the tokenizer.
    assert!(unparseable("DR/**/OP TABLE customers"));
    // An ordinary comment is not code, and hides nothing of what follows.
    assert_eq!(kinds("/* DROP TABLE customers */ SELECT 1"), ["SELECT"]);
    assert_eq!(kinds("SELECT 1 # DROP TABLE customers"), ["SELECT"]);
    assert_eq!(kinds("SELECT 1 -- DROP TABLE customers"), ["SELECT"]);
    assert_eq!(
        kinds("SELECT 1 #\n; DROP TABLE customers"),
        ["SELECT", "DROP"]
    );
}

#[test]
fn quoting_and_case_do_not_hide_or_invent_statements() {
    assert_eq!(kinds("dRoP tAbLe `customers`"), ["DROP"]);
    assert_eq!(kinds("SELECT 'x; DROP TABLE customers'"), ["SELECT"]);
    assert_eq!(kinds("SELECT 'it\\'s; DROP TABLE t'"), ["SELECT"]);
    assert_eq!(kinds("SELECT `drop`, `into` FROM `outfile`"), ["SELECT"]);
    assert_eq!(kinds("SELECT 'INTO OUTFILE' FROM t"), ["SELECT"]);
}

#[test]
fn no_backslash_escapes_reads_strings_as_the_server_does() {
    let sql = "SELECT 'a\\'; DROP TABLE customers; -- '";
    assert_eq!(kinds(sql), ["SELECT"]);
    let c = classify(sql, Escapes::NoBackslash).unwrap();
    assert!(c.kinds.contains(&StatementKind::Drop), "{c:?}");
    assert_eq!(Escapes::from_status(0x0202), Escapes::NoBackslash);
    assert_eq!(Escapes::from_status(0x0002), Escapes::Backslash);
}

#[test]
fn file_forms_found_by_tokens() {
    assert_eq!(
        kinds("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE customers"),
        ["LOAD_DATA"]
    );
    assert_eq!(
        kinds("load xml infile '/tmp/x.xml' into table t"),
        ["LOAD_DATA"]
    );
    assert_eq!(
        kinds("SELECT * FROM customers INTO OUTFILE '/tmp/c.csv'"),
        ["SELECT", "INTO_OUTFILE"]
    );
    assert_eq!(
        kinds("SELECT ssn INTO DUMPFILE '/tmp/x' FROM customers"),
        ["SELECT", "INTO_OUTFILE"]
    );
    assert_eq!(
        kinds("/*!50000 SELECT * FROM customers INTO OUTFILE '/tmp/c' */"),
        ["SELECT", "INTO_OUTFILE"]
    );
}

#[test]
fn prepared_texts_are_classified_too() {
    assert_eq!(
        kinds("PREPARE s FROM 'DROP TABLE customers'"),
        ["DROP", "PREPARE"]
    );
    assert_eq!(
        kinds("PREPARE s FROM 'DELETE FROM customers WHERE id = ?'; EXECUTE s USING @a"),
        ["DELETE", "PREPARE", "EXECUTE"]
    );
    assert!(unparseable("PREPARE s FROM @sql"));
}

#[test]
fn usual_kinds() {
    assert_eq!(kinds("INSERT INTO t VALUES (1)"), ["INSERT"]);
    assert_eq!(kinds("REPLACE INTO t VALUES (1)"), ["INSERT"]);
    assert_eq!(kinds("ALTER TABLE t ADD COLUMN c int"), ["ALTER"]);
    assert_eq!(kinds("RENAME TABLE t TO u"), ["ALTER"]);
    assert_eq!(kinds("GRANT ALL ON *.* TO 'x'@'%'"), ["GRANT"]);
    assert_eq!(kinds("CREATE TABLE t (id int)"), ["CREATE"]);
    assert_eq!(kinds("SHOW TABLES"), ["SHOW"]);
    assert_eq!(kinds("USE billing"), ["USE"]);
    assert_eq!(kinds("SET NAMES utf8mb4"), ["SET"]);
    assert_eq!(kinds("START TRANSACTION; COMMIT"), ["TRANSACTION"]);
    assert_eq!(
        kinds("EXPLAIN DELETE FROM t"),
        ["DELETE", "DELETE_WITHOUT_WHERE", "EXPLAIN"]
    );
    assert_eq!(kinds("SELECT SLEEP(30)"), ["SELECT"]);
    let c = classify("SELECT 1;;SELECT 2;", Escapes::Backslash).unwrap();
    assert_eq!(c.statements, 2);
}

#[test]
fn what_the_parser_rejects_is_unparseable() {
    assert!(unparseable("DELIMITER //"));
    assert!(unparseable("DROP TABLE 'unterminated"));
    assert!(unparseable("this is not sql"));
    assert!(classify("", Escapes::Backslash).unwrap().kinds.is_empty());
}
