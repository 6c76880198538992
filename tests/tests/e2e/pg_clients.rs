//! PostgreSQL clients in the wild (issue 20): drivers that bundle a
//! current libpq open with a TLS ClientHello (`sslnegotiation=direct`,
//! PostgreSQL 17) instead of an SSLRequest, and must be served like the
//! classic opening.
use sluice_tests::Stack;

use crate::{billing_db, events, sessions_of, DB, DB_HOST};

/// psycopg 3 (binary wheel, its own libpq ≥ 17): connects with `argv[1]`,
/// prints libpq's version, whether TLS is in use, and `current_user`.
const PSYCOPG: &str = r#"
import sys, psycopg
print(psycopg.pq.version())
with psycopg.connect(sys.argv[1]) as c:
    print(c.info.pgconn.ssl_in_use)
    print(c.execute("SELECT current_user").fetchone()[0])
"#;

/// A TLS client that opens directly with TLS but offers no ALPN: the
/// handshake may complete, but no PostgreSQL message ever comes back.
const NO_ALPN: &str = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
try:
    t = ctx.wrap_socket(s, server_hostname=sys.argv[4])
    t.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    print("answer" if t.recv(1) else "closed")
except (ssl.SSLError, ConnectionError, OSError) as e:
    print("closed")
"#;

#[test]
fn psycopg_with_sslnegotiation_direct_logs_in_beside_the_classic_sslrequest() {
    let stack = Stack::builder("pg-direct-tls")
        .service(billing_db())
        .start()
        .unwrap();
    let token = stack.token(DB).unwrap();
    let ca = stack.sluice.ca_cert_path().unwrap();
    for negotiation in ["direct", "postgres"] {
        let conninfo = stack.pg_conninfo(
            DB,
            &token,
            &format!(
                "sslmode=verify-full sslrootcert={} sslnegotiation={negotiation}",
                ca.display()
            ),
        );
        let out = stack.python(&[], PSYCOPG, &[&conninfo]).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{negotiation}: psycopg failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        let libpq: u32 = lines[0].parse().unwrap();
        assert!(
            libpq >= 170000,
            "psycopg's libpq {libpq} predates direct TLS"
        );
        assert_eq!(
            lines[1..],
            ["True", sluice_tests::postgres::ROLE],
            "{negotiation}"
        );
    }
    let sessions = sessions_of(&stack, DB);
    assert_eq!(sessions.len(), 2);
    for s in &sessions {
        assert_eq!(events(s, "open")[0]["protocol"], "postgres+tls");
        assert_eq!(events(s, "auth_ok").len(), 1);
    }

    // Direct TLS without ALPN "postgresql" is refused, as by the server.
    let pg = stack.postgres(DB).addr();
    let out = stack
        .python(
            &[],
            NO_ALPN,
            &[
                &pg.ip().to_string(),
                &pg.port().to_string(),
                &ca.display().to_string(),
                DB_HOST,
            ],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "closed");
    stack.assert_no_secret_leaked();
}
