//! A tiny tokio-postgres agent for the end-to-end tests: connects with a
//! libpq-style connection string (the Sluice token as password, no TLS) and
//! runs steps in order, printing one JSON object per line.
//!
//! ```text
//! pg_client CONNINFO STEP…
//!   query:SQL   prepare SQL (a named statement), execute it, print
//!               {"step":N,"columns":[…],"rows":[[…]…]} or {"step":N,"error":{"code":…,"message":…}}
//!   wait        print {"step":N,"waiting":true}, then read one line from stdin
//!   closed      wait up to 5 s for the server to end the connection;
//!               print {"step":N,"closed":bool}
//! ```
//! A failed connect prints `{"connect_error":{"code":…,"message":…},"ms":…}`
//! and exits 1.
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::{types::Type, NoTls, Row};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((conninfo, steps)) = args.split_first() else {
        eprintln!("usage: pg_client CONNINFO STEP…");
        std::process::exit(2);
    };
    let started = Instant::now();
    let (client, connection) = match tokio_postgres::connect(conninfo, NoTls).await {
        Ok(c) => c,
        Err(e) => {
            println!(
                "{}",
                json!({"connect_error": error_json(&e), "ms": started.elapsed().as_millis() as u64})
            );
            std::process::exit(1);
        }
    };
    let mut connection = tokio::spawn(connection);
    for (n, step) in steps.iter().enumerate() {
        let out = if let Some(sql) = step.strip_prefix("query:") {
            match query(&client, sql).await {
                Ok((columns, rows)) => json!({"step": n, "columns": columns, "rows": rows}),
                Err(e) => json!({"step": n, "error": error_json(&e)}),
            }
        } else if step == "wait" {
            println!("{}", json!({"step": n, "waiting": true}));
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            continue;
        } else if step == "closed" {
            let ended = tokio::time::timeout(Duration::from_secs(5), &mut connection)
                .await
                .is_ok();
            json!({"step": n, "closed": ended && client.is_closed()})
        } else {
            eprintln!("unknown step {step:?}");
            std::process::exit(2);
        };
        println!("{out}");
    }
}

async fn query(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<Value>>), tokio_postgres::Error> {
    let statement = client.prepare(sql).await?;
    let columns = statement
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let rows = client.query(&statement, &[]).await?;
    Ok((columns, rows.iter().map(row_json).collect()))
}

fn row_json(row: &Row) -> Vec<Value> {
    (0..row.len())
        .map(|i| {
            let t = row.columns()[i].type_();
            let v = if *t == Type::INT4 {
                row.try_get::<_, Option<i32>>(i).map(|v| json!(v))
            } else if *t == Type::INT8 {
                row.try_get::<_, Option<i64>>(i).map(|v| json!(v))
            } else if *t == Type::BOOL {
                row.try_get::<_, Option<bool>>(i).map(|v| json!(v))
            } else {
                row.try_get::<_, Option<String>>(i).map(|v| json!(v))
            };
            v.unwrap_or_else(|e| json!({ "decode_error": e.to_string() }))
        })
        .collect()
}

fn error_json(e: &tokio_postgres::Error) -> Value {
    match e.as_db_error() {
        Some(db) => {
            json!({"code": db.code().code(), "message": db.message(), "severity": db.severity()})
        }
        None => json!({"code": Value::Null, "message": e.to_string()}),
    }
}
