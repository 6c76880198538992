//! Sluice's MySQL upstream login (`sluice-mysql`) against a real MariaDB
//! (Debian's `mariadb-server`, [`sluice_tests::mariadb`]): each plugin
//! MariaDB asks for, TLS with `verify-full`, the refusals, and that the
//! server is never offered `CLIENT_LOCAL_FILES`.
//!
//! Requires root (the server runs as the `mysql` OS user) and
//! mariadb-server / mariadb-client (`cargo xtask setup`).
use std::net::IpAddr;

use rustls_pki_types::ServerName;
use sluice_mysql::{
    response::{EofPacket, ErrPacket},
    upstream::{login, LoginParams, Upstream, UpstreamError, UpstreamTls},
    wire::Reader,
    Capabilities,
};
use sluice_tests::{
    mariadb::{MariaDb, DATABASE, ED25519_USER, NATIVE_USER},
    random_secret,
    stack::next_upstream_ip,
    TestCa,
};
use tokio::net::TcpStream;

const HOST: &str = "mysql.sluice.test";

struct Fixture {
    db: MariaDb,
    ca: TestCa,
    _dir: tempfile::TempDir,
}

fn fixture(tls: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path()).unwrap();
    let leaf = ca.leaf(&[HOST]).unwrap();
    let ip: IpAddr = next_upstream_ip();
    let db = MariaDb::start(ip, &random_secret(), tls.then_some(&leaf)).unwrap();
    Fixture { db, ca, _dir: dir }
}

impl Fixture {
    fn params<'a>(
        &'a self,
        user: &'a str,
        password: &'a [u8],
        tls: UpstreamTls,
        name: &str,
    ) -> LoginParams<'a> {
        LoginParams {
            user,
            password,
            database: Some(DATABASE.as_bytes()),
            tls,
            tls_config: Some(self.ca.client_config().unwrap()),
            server_name: ServerName::try_from(name.to_string()).unwrap(),
            // Even when asked for, LOCAL_FILES is never sent.
            capabilities: Capabilities::UPSTREAM | Capabilities::LOCAL_FILES,
        }
    }

    async fn login(&self, params: &LoginParams<'_>) -> Result<Upstream<TcpStream>, UpstreamError> {
        let tcp = TcpStream::connect(self.db.addr()).await.unwrap();
        login(tcp, params).await
    }
}

/// Runs `sql` by COM_QUERY and returns the first column of each row of a
/// text result set, or the ERR packet.
async fn query(up: &mut Upstream<TcpStream>, sql: &str) -> Result<Vec<Option<String>>, ErrPacket> {
    let s = &mut up.stream;
    s.reset_seq();
    let mut cmd = vec![0x03];
    cmd.extend_from_slice(sql.as_bytes());
    s.write(&cmd).await.unwrap();
    let first = s.read().await.unwrap();
    match first.payload[0] {
        0xFF => return Err(ErrPacket::decode(&first.payload).unwrap()),
        0x00 => return Ok(Vec::new()),
        _ => {}
    }
    // Column definitions, then EOF (CLIENT_DEPRECATE_EOF is not asked for).
    while !EofPacket::is_eof(&s.read().await.unwrap().payload) {}
    let mut rows = Vec::new();
    loop {
        let row = s.read().await.unwrap();
        if EofPacket::is_eof(&row.payload) {
            return Ok(rows);
        }
        let value = Reader::new(&row.payload).lenenc_bytes("value").unwrap();
        rows.push(value.map(|v| String::from_utf8_lossy(v).into_owned()));
    }
}

async fn one(up: &mut Upstream<TcpStream>, sql: &str) -> String {
    let rows = query(up, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().next().flatten().unwrap_or_default()
}

#[tokio::test]
async fn verified_tls_logins_with_native_password_and_ed25519() {
    let f = fixture(true);
    let password = f.db.password().as_bytes();
    for user in [NATIVE_USER, ED25519_USER] {
        let mut up = f
            .login(&f.params(user, password, UpstreamTls::VerifyFull, HOST))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(up.stream.get_ref().is_verified_tls());
        assert_eq!(
            one(&mut up, "SELECT CURRENT_USER()").await,
            format!("{user}@%")
        );
        let cipher = query(&mut up, "SHOW SESSION STATUS LIKE 'Ssl_version'")
            .await
            .unwrap();
        assert_eq!(cipher.len(), 1, "{user}: one Ssl_version row");
        assert_eq!(one(&mut up, "SELECT COUNT(*) FROM customers").await, "3");
        // The thread id of the handshake is the server's id for this session.
        assert_eq!(
            one(&mut up, "SELECT CONNECTION_ID()").await,
            up.handshake.connection_id.to_string()
        );
        let plugin =
            f.db.root_sql(&format!(
                "SELECT plugin FROM mysql.user WHERE user = '{user}'"
            ))
            .unwrap();
        let expect = if user == NATIVE_USER {
            "mysql_native_password"
        } else {
            "ed25519"
        };
        assert_eq!(plugin.trim(), expect);
    }
}

#[tokio::test]
async fn wrong_certificate_name_and_wrong_password_are_refused() {
    let f = fixture(true);
    let password = f.db.password().as_bytes();
    let err = f
        .login(&f.params(
            NATIVE_USER,
            password,
            UpstreamTls::VerifyFull,
            "other.sluice.test",
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Tls(_)), "{err}");
    for user in [NATIVE_USER, ED25519_USER] {
        let err = f
            .login(&f.params(user, b"not-the-password", UpstreamTls::VerifyFull, HOST))
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::Refused(ref e) if e.code == 1045),
            "{user}: {err}"
        );
    }
    // TLS without verification: the credential is not sent at all.
    let err = f
        .login(&f.params(NATIVE_USER, password, UpstreamTls::Require, HOST))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unverified), "{err}");
    let log = f.db.log();
    assert!(
        !log.contains(f.db.password()),
        "the password is in the server log"
    );
}

#[tokio::test]
async fn plaintext_only_when_disabled_and_never_local_files() {
    let f = fixture(false);
    let password = f.db.password().as_bytes();
    let err = f
        .login(&f.params(NATIVE_USER, password, UpstreamTls::VerifyFull, HOST))
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::TlsNotOffered), "{err}");
    for user in [NATIVE_USER, ED25519_USER] {
        let mut up = f
            .login(&f.params(user, password, UpstreamTls::Disable, HOST))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(!up.stream.get_ref().is_tls());
        assert_eq!(
            one(&mut up, "SELECT CURRENT_USER()").await,
            format!("{user}@%")
        );
        let err = query(
            &mut up,
            "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE customers FIELDS TERMINATED BY ':'",
        )
        .await
        .unwrap_err();
        // ER_NOT_ALLOWED_COMMAND (MySQL 1148/3948, MariaDB 4166): the
        // server knows the client sends no files.
        assert!([1148, 3948, 4166].contains(&err.code), "{err}");
        assert_eq!(one(&mut up, "SELECT COUNT(*) FROM customers").await, "3");
    }
}
