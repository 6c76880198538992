//! The row codecs of `sluice-mysql` on real MariaDB result sets: a text
//! result (COM_QUERY) and a binary one (COM_STMT_PREPARE / EXECUTE) of
//! `customers` are masked by column name, also behind an alias, and read
//! back: masked values are `****`, NULL stays NULL, other values intact.
//!
//! Requires root and mariadb-server (`cargo xtask setup`).
use bytes::{BufMut, BytesMut};
use rustls_pki_types::ServerName;
use sluice_mysql::{
    response::{EofPacket, ErrPacket},
    resultset::{mask_binary_row, mask_text_row, ColumnDefinition, MASKED_TEXT},
    upstream::{login, LoginParams, Upstream, UpstreamTls},
    wire::Reader,
    Capabilities, PacketStream,
};
use sluice_tests::{
    mariadb::{MariaDb, DATABASE, NATIVE_USER},
    postgres::CUSTOMERS,
    random_secret,
    stack::next_upstream_ip,
};
use tokio::net::TcpStream;

const SQL: &str = "SELECT id, name, ssn AS tax_id, CONCAT('x') AS expr FROM customers ORDER BY id";

async fn connect(db: &MariaDb) -> Upstream<TcpStream> {
    let params = LoginParams {
        user: NATIVE_USER,
        password: db.password().as_bytes(),
        database: Some(DATABASE.as_bytes()),
        tls: UpstreamTls::Disable,
        tls_config: None,
        server_name: ServerName::try_from("mysql.sluice.test").unwrap(),
        capabilities: Capabilities::UPSTREAM,
    };
    login(TcpStream::connect(db.addr()).await.unwrap(), &params)
        .await
        .unwrap()
}

async fn command<S>(s: &mut PacketStream<S>, payload: &[u8]) -> bytes::Bytes
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.reset_seq();
    s.write(payload).await.unwrap();
    let p = s.read().await.unwrap().payload;
    assert_ne!(p[0], 0xFF, "{}", ErrPacket::decode(&p).unwrap());
    p
}

/// Column definitions up to their EOF.
async fn definitions<S>(s: &mut PacketStream<S>, n: usize) -> Vec<ColumnDefinition>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut defs = Vec::new();
    for _ in 0..n {
        defs.push(ColumnDefinition::decode(&s.read().await.unwrap().payload).unwrap());
    }
    assert!(EofPacket::is_eof(&s.read().await.unwrap().payload));
    defs
}

/// Rows up to their EOF.
async fn rows<S>(s: &mut PacketStream<S>) -> Vec<bytes::Bytes>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut rows = Vec::new();
    loop {
        let p = s.read().await.unwrap().payload;
        if EofPacket::is_eof(&p) {
            return rows;
        }
        rows.push(p);
    }
}

fn masked(defs: &[ColumnDefinition]) -> Vec<bool> {
    let mask = vec!["ssn".to_string()];
    defs.iter().map(|d| d.is_masked_by(&mask)).collect()
}

fn expected_ssn(i: usize) -> Option<&'static [u8]> {
    CUSTOMERS[i].2.map(|_| MASKED_TEXT)
}

#[tokio::test]
async fn text_and_binary_results_are_masked_by_name_behind_an_alias() {
    let db = MariaDb::start(next_upstream_ip(), &random_secret(), None).unwrap();
    let mut up = connect(&db).await;
    let s = &mut up.stream;

    // Text protocol.
    let mut query = vec![0x03];
    query.extend_from_slice(SQL.as_bytes());
    let count = command(s, &query).await;
    let n = Reader::new(&count).lenenc_int("columns").unwrap().unwrap() as usize;
    let defs = definitions(s, n).await;
    assert_eq!(masked(&defs), [false, false, true, false]);
    let text = rows(s).await;
    assert_eq!(text.len(), CUSTOMERS.len());
    for (i, row) in text.iter().enumerate() {
        let out = mask_text_row(row, &masked(&defs)).unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(
            r.lenenc_bytes("id").unwrap(),
            Some(CUSTOMERS[i].0.to_string().as_bytes())
        );
        assert_eq!(
            r.lenenc_bytes("name").unwrap(),
            Some(CUSTOMERS[i].1.as_bytes())
        );
        assert_eq!(r.lenenc_bytes("ssn").unwrap(), expected_ssn(i));
        assert_eq!(r.lenenc_bytes("expr").unwrap(), Some(&b"x"[..]));
    }

    // Binary protocol: COM_STMT_PREPARE, then COM_STMT_EXECUTE.
    let mut prepare = vec![0x16];
    prepare.extend_from_slice(SQL.as_bytes());
    let ok = command(s, &prepare).await;
    let mut r = Reader::new(&ok[1..]);
    let id = r.u32("statement id").unwrap();
    let n = usize::from(r.u16("columns").unwrap());
    assert_eq!(r.u16("params").unwrap(), 0);
    definitions(s, n).await;
    let mut execute = BytesMut::new();
    execute.put_u8(0x17);
    execute.put_u32_le(id);
    execute.put_u8(0);
    execute.put_u32_le(1);
    command(s, &execute).await;
    let defs = definitions(s, n).await;
    let types: Vec<u8> = defs.iter().map(|d| d.column_type).collect();
    let binary = rows(s).await;
    assert_eq!(binary.len(), CUSTOMERS.len());
    for (i, row) in binary.iter().enumerate() {
        let out = mask_binary_row(row, &types, &masked(&defs)).unwrap();
        // Read back as the client will, with the masked column retyped.
        let read_types: Vec<u8> = defs
            .iter()
            .zip(masked(&defs))
            .map(|(d, m)| {
                if m {
                    d.masked().column_type
                } else {
                    d.column_type
                }
            })
            .collect();
        let mut r = Reader::new(&out);
        r.u8("header").unwrap();
        let bitmap = r
            .bytes((read_types.len() + 9) / 8, "bitmap")
            .unwrap()
            .to_vec();
        assert_eq!(read_types[0], 0x03, "id is a LONG");
        assert_eq!(r.u32("id").unwrap() as i32, CUSTOMERS[i].0);
        assert_eq!(
            r.lenenc_bytes("name").unwrap(),
            Some(CUSTOMERS[i].1.as_bytes())
        );
        let ssn_null = bitmap[0] & (1 << 4) != 0;
        assert_eq!(ssn_null, CUSTOMERS[i].2.is_none());
        if !ssn_null {
            assert_eq!(r.lenenc_bytes("ssn").unwrap(), Some(MASKED_TEXT));
        }
        assert_eq!(r.lenenc_bytes("expr").unwrap(), Some(&b"x"[..]));
        assert!(r.is_empty());
    }
}
