//! The fuzzing entry points, one per target, shared by the cargo-fuzz
//! binaries (`fuzz_targets/*.rs`) and the corpus replay test of the normal
//! suite (`tests/tests/fuzz_corpus.rs`, which includes this file by path).
//!
//! Each entry takes arbitrary bytes, drives one public parser of the
//! `sluice` crate the way the proxy does, and panics (a libFuzzer crash)
//! only when an invariant of that parser breaks. Allowed crates: `sluice`,
//! `sluice_mysql`, `bytes`, `hyper` and std, which both builds have.
use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::{BufMut, BytesMut};
use sluice::{
    config::Injection,
    proxy::{
        http::{credential, json_mask, kube, kube_mask, kube_stream::Frames},
        postgres::{
            self,
            codec::{self, CodecError, Reader},
            mask::{self, RowPlan, MASKED_TEXT},
            scram::{self, ServerFirst},
        },
    },
};

/// The targets, by name (the `fuzz_targets/<name>.rs` binaries and the
/// `fuzz/corpus/<name>/` directories).
/// A fuzzing entry point.
pub type Entry = fn(&[u8]);

pub const TARGETS: &[(&str, Entry)] = &[
    ("pg_frontend", pg_frontend),
    ("pg_backend_mask", pg_backend_mask),
    ("http_token", http_token),
    ("json_mask", json_mask),
    ("sql_classify", sql_classify),
    ("scram", scram),
    ("mysql_client", mysql_client),
    ("mysql_server", mysql_server),
    ("mysql_classify", mysql_classify),
    ("kube_request", kube_request),
    ("kube_stream", kube_stream),
    ("ssh_rules", ssh_rules),
];

/// Most typed messages one input is read as (keeps each run short).
const MAX_MESSAGES: usize = 64;
/// Longest SQL text handed to the PostgreSQL parser per message.
const MAX_SQL: usize = 16 * 1024;

/// Runs a future that never waits on anything but an in-memory slice to
/// completion, without a runtime.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    // A reader over `&[u8]` is always ready; the bound only guards the
    // fuzzer against a future that would spin.
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a read from an in-memory slice did not complete");
}

/// PostgreSQL frontend traffic: start-up packets (SSLRequest, GSSENCRequest,
/// CancelRequest, StartupMessage), then typed messages, each parsed the way
/// `startup.rs` and `relay.rs` parse them: Query and Parse SQL through the
/// classifier, Bind, Describe, Execute, Close, CopyData framing.
pub fn pg_frontend(data: &[u8]) {
    run(async {
        let mut reader = Reader::new(data, BytesMut::new());
        let mut logged_in = false;
        for _ in 0..4 {
            let packet = match reader.startup_packet().await {
                Ok(p) => p,
                Err(e) => return check_codec_error(&e),
            };
            assert!(
                packet.len() + 4 <= codec::MAX_STARTUP,
                "start-up packet over the limit"
            );
            let mut body = &packet[..];
            let Ok(code) = codec::i32_at(&mut body, "start-up packet") else {
                return;
            };
            match code {
                80877103 | 80877104 => continue, // SSL / GSSENC: another packet follows
                80877102 => return,              // CancelRequest
                v if v >> 16 == 3 => {
                    // The gateway's own StartupMessage parser; `user` required.
                    let Ok(startup) =
                        sluice::proxy::postgres::startup::parse_startup(body, (v & 0xffff) as u16)
                    else {
                        return;
                    };
                    if startup.get("user").is_none_or(str::is_empty) {
                        return;
                    }
                    logged_in = true;
                    break;
                }
                _ => return,
            }
        }
        if !logged_in {
            return;
        }
        for _ in 0..MAX_MESSAGES {
            let buffered = reader.has_buffered_message();
            let msg = match reader.message().await {
                Ok(m) => m,
                Err(e) => {
                    assert!(
                        !buffered || !matches!(e, CodecError::Closed),
                        "a buffered message could not be read"
                    );
                    return check_codec_error(&e);
                }
            };
            assert!(
                msg.body.len() + 4 <= codec::MAX_MESSAGE,
                "message over the limit"
            );
            // Re-encoding gives back the wire bytes' framing.
            let mut wire = BytesMut::new();
            msg.encode(&mut wire);
            assert_eq!(wire.len(), msg.body.len() + 5);
            frontend_message(msg.tag, &msg.body);
        }
    })
}

/// What `relay::frontend` reads from each typed message.
fn frontend_message(tag: u8, body: &[u8]) {
    let mut b = body;
    match tag {
        b'Q' => {
            if let Ok(text) = codec::cstr(&mut b, "Query") {
                classify_bounded(text);
            }
        }
        b'P' => {
            let Ok(_name) = codec::cstr(&mut b, "Parse") else {
                return;
            };
            let Ok(text) = codec::cstr(&mut b, "Parse") else {
                return;
            };
            classify_bounded(text);
            if let Ok(n) = codec::i16_at(&mut b, "Parse") {
                for _ in 0..n.max(0) {
                    if codec::i32_at(&mut b, "Parse").is_err() {
                        break;
                    }
                }
            }
        }
        b'B' => {
            let _ = sluice::proxy::postgres::relay::parse_bind(b);
        }
        b'D' | b'C' => {
            if let Some((_, mut rest)) = b.split_first() {
                let _ = codec::cstr(&mut rest, "Describe/Close");
            }
        }
        b'E' => {
            let _ = codec::cstr(&mut b, "Execute").and_then(|_| codec::i32_at(&mut b, "Execute"));
        }
        // CopyData, CopyDone, CopyFail, Flush, Sync, Terminate, FunctionCall:
        // relayed as framed.
        _ => {}
    }
}

fn classify_bounded(text: &str) {
    if text.len() <= MAX_SQL {
        let _ = postgres::sql::ClassifyCache::new(16).classify(text);
    }
}

fn check_codec_error(e: &CodecError) {
    if let CodecError::BadLength(len) = e {
        // Only lengths outside the accepted ranges are refused.
        let startup = (8..=codec::MAX_STARTUP as i64).contains(len);
        let typed = (4..=codec::MAX_MESSAGE as i64).contains(len);
        assert!(
            !(startup && typed),
            "an acceptable length {len} was refused"
        );
    }
}

/// PostgreSQL backend traffic through the masking path: the first byte picks
/// the masked column names and whether Bind result formats override the
/// described ones; then `RowDescription`s and `DataRow`s (and any other
/// messages, relayed as framed) are read and every `DataRow` is rebuilt by
/// [`RowPlan::apply`]. Invariants: masked values come out as `****` or NULL,
/// unmasked ones byte for byte, and the column count and framing are kept.
pub fn pg_backend_mask(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let names: &[&str] = match selector & 3 {
        0 => &["ssn"],
        1 => &["ssn", "card_number"],
        2 => &["a", "b", "c"],
        _ => &[""],
    };
    let masks: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let formats: Option<Vec<i16>> = match (selector >> 2) & 3 {
        0 => None,
        1 => Some(vec![]),
        2 => Some(vec![1]),
        _ => Some(vec![0, 1, 1, 0]),
    };
    run(async {
        let mut reader = Reader::new(rest, BytesMut::new());
        let mut plan: Option<RowPlan> = None;
        let mut columns = Vec::new();
        for _ in 0..MAX_MESSAGES {
            let Ok(msg) = reader.message().await else {
                return;
            };
            match msg.tag {
                b'T' => {
                    let Ok(cols) = mask::columns(&msg.body) else {
                        plan = None;
                        continue;
                    };
                    plan = RowPlan::new(&cols, &masks, formats.as_deref());
                    if let Some(p) = &plan {
                        assert!(!p.names.is_empty());
                        for n in &p.names {
                            assert!(
                                masks.iter().any(|m| m.eq_ignore_ascii_case(n)),
                                "{n} masked without a rule"
                            );
                        }
                    }
                    columns = cols;
                }
                b'D' => {
                    let Some(p) = &plan else {
                        let mut out = BytesMut::new();
                        mask::passthrough(msg.tag, &msg.body, &mut out);
                        assert_eq!(&out[5..], &msg.body[..]);
                        continue;
                    };
                    let mut out = BytesMut::new();
                    let Ok(count) = p.apply(&msg.body, &mut out) else {
                        continue;
                    };
                    check_masked_row(&columns, &masks, &msg.body, &out, count);
                }
                _ => {}
            }
        }
    })
}

/// The values of a `DataRow` body (`None` = NULL), or `None` if truncated.
fn row_values(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut b = body;
    let n = codec::i16_at(&mut b, "DataRow").ok()?;
    let mut values = Vec::new();
    for _ in 0..n.max(0) {
        let len = codec::i32_at(&mut b, "DataRow").ok()?;
        if len < 0 {
            values.push(None);
        } else {
            let len = len as usize;
            if b.len() < len {
                return None;
            }
            let (v, rest) = b.split_at(len);
            values.push(Some(v));
            b = rest;
        }
    }
    Some(values)
}

fn check_masked_row(
    columns: &[mask::Column],
    masks: &[String],
    input: &[u8],
    out: &[u8],
    count: u64,
) {
    assert_eq!(out[0], b'D', "a rebuilt row is a DataRow");
    let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
    assert_eq!(
        len + 1,
        out.len(),
        "the rebuilt DataRow's length prefix is right"
    );
    let before = row_values(input).expect("apply accepted the row, so it parses");
    let after = row_values(&out[5..]).expect("the rebuilt row parses");
    assert_eq!(before.len(), after.len(), "column count kept");
    assert_eq!(
        before.len(),
        columns.len(),
        "apply checks the count against the description"
    );
    let mut masked = 0;
    for ((col, b), a) in columns.iter().zip(&before).zip(&after) {
        if masks.iter().any(|m| m.eq_ignore_ascii_case(&col.name)) {
            match (b, a) {
                (None, None) => {}
                (Some(_), None) => masked += 1,
                (Some(_), Some(v)) => {
                    assert_eq!(
                        *v, MASKED_TEXT,
                        "a masked value became something else than ****"
                    );
                    masked += 1;
                }
                (None, Some(_)) => panic!("NULL became a value"),
            }
        } else {
            assert_eq!(b, a, "an unmasked column was changed");
        }
    }
    assert_eq!(masked, count, "the masked count matches");
}

/// HTTP token replacement: the input is a small request description
/// (`method`, `uri`, then `name: value` lines, split on `\n`), built into
/// [`hyper::http::request::Parts`]; [`credential::find`] then
/// [`credential::inject`] under each credential shape. Invariants: a found
/// token is a well-formed `slt_` token, and after a successful inject it is
/// gone from every place `find` looks (headers, Basic auth, query values).
pub fn http_token(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET");
    let uri = lines.next().unwrap_or("/");
    let mut builder = hyper::Request::builder()
        .method(method.trim())
        .uri(uri.trim());
    for line in lines.take(32) {
        if let Some((n, v)) = line.split_once(':') {
            builder = builder.header(n.trim(), v.trim_start());
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let found = match credential::find(&parts) {
        Ok(Some(found)) => found,
        Ok(None) | Err(credential::CredentialError::Ambiguous) => return,
        Err(e) => panic!("find failed with {e}"),
    };
    let token = found.token.as_str().to_string();
    assert!(
        token.starts_with("slt_") && token.len() >= 36,
        "a malformed token was found"
    );
    assert!(token[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    let secret: &[u8] = match selector & 3 {
        0 => b"sk_live_0123456789abcdef",
        1 => b"p@ss w/rd+&=%",
        2 => b"\xff\xfe not utf-8",
        _ => b"line\r\nbreak",
    };
    let header = |name: &str, format: &str| Injection::Header {
        name: name.into(),
        format: format.into(),
    };
    let shapes = [
        Injection::InPlace,
        header("Authorization", "Bearer {}"),
        header("x-api-key", "{}"),
        Injection::Query {
            name: "api_key".into(),
        },
    ];
    for shape in &shapes {
        let mut p = parts.clone();
        if credential::inject(&mut p, &found, shape, secret).is_err() {
            continue;
        }
        if let Ok(Some(again)) = credential::find(&p) {
            assert_ne!(again.token.as_str(), token, "the token survived inject");
        }
        if *shape != Injection::InPlace {
            let secret_text = String::from_utf8_lossy(secret);
            let in_header = match shape {
                Injection::Header { name, .. } => p
                    .headers
                    .get(name.as_str())
                    .is_some_and(|v| v.as_bytes().windows(secret.len()).any(|w| w == secret)),
                _ => false,
            };
            let in_query = matches!(shape, Injection::Query { .. }) && p.uri.query().is_some();
            assert!(
                in_header || in_query || secret_text.is_empty(),
                "the secret went nowhere"
            );
        }
    }
}

/// JSON masking of an HTTP response body: the first byte picks the masks.
/// Invariants: the output is JSON, and masking it again changes nothing,
/// numbers included (`regress-number-reround`: `622e222` used to be
/// re-rounded on every pass).
pub fn json_mask(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let masks: Vec<String> = match selector & 3 {
        0 => vec!["ssn".into()],
        1 => vec!["card.number".into(), "ssn".into()],
        2 => vec!["a.b.c".into(), "".into()],
        _ => vec![".".into(), "x..y".into()],
    };
    let Ok((out, report)) = json_mask::mask_json(body, &masks) else {
        return;
    };
    let (again, _) = json_mask::mask_json(&out, &masks).expect("masked output is JSON");
    assert_eq!(out, again, "masking is idempotent");
    assert_eq!(report.fields.is_empty(), report.count == 0);
}

/// SQL classification: never panics (through the relay's path too: the
/// classification cache scans the text for its key before parsing), and a
/// text that classifies has at least one kind per statement.
pub fn sql_classify(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > MAX_SQL {
        return;
    }
    let _ = postgres::sql::ClassifyCache::new(16).classify(text);
    if let Ok(c) = postgres::sql::classify(text) {
        assert!(
            c.statements == 0 || !c.kinds.is_empty(),
            "statements without kinds"
        );
        let mut sorted = c.kinds.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, c.kinds, "kinds are sorted and unique");
    }
}

/// The SCRAM-SHA-256 server: a client-first-message and a client-final-
/// message separated by the first `\n` of the input, checked against one
/// verifier. Invariants: no panic; a forged final message never matches.
pub fn scram(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (first, rest) = data.split_at(split);
    let last = rest.get(1..).unwrap_or(&[]);
    let salt = [7u8; 16];
    let Ok(server) = ServerFirst::new(first, &salt) else {
        return;
    };
    let msg = std::str::from_utf8(server.message()).expect("server-first is text");
    assert!(msg.starts_with("r=") && msg.contains(",s=") && msg.ends_with(",i=4096"));
    // The verifier of a password the fuzzer cannot know.
    static VERIFIER: std::sync::OnceLock<scram::Verifier> = std::sync::OnceLock::new();
    let v = VERIFIER
        .get_or_init(|| scram::verifier(b"slt_fuzzer-cannot-guess-this", &salt))
        .clone();
    if let Ok(Some(_)) = server.verify(last, &[v]) {
        panic!("a fuzzer-made proof matched a verifier");
    }
}

/// Longest glob, command line or key text of one `ssh_rules` input.
const MAX_SSH_TEXT: usize = 4 * 1024;

/// SSH command rules and `upstream_host_key` parsing (the parsing Sluice
/// adds on top of russh): line one is a `deny` glob, line two an exec
/// command line, the rest a known_hosts entry. A glob without `*` matches
/// exactly its own text; a glob of stars alone matches everything.
pub fn ssh_rules(data: &[u8]) {
    use sluice::policy::{
        ssh::{self, CommandRule, SshAllow, SshOperation, SshPolicy},
        Decision,
    };
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let mut next = || {
        let part = parts.next().unwrap_or("");
        let mut end = part.len().min(MAX_SSH_TEXT);
        while !part.is_char_boundary(end) {
            end -= 1;
        }
        &part[..end]
    };
    let (glob, command, key) = (next(), next(), next());
    let deny = [CommandRule {
        command: glob.to_string(),
    }];
    let policy = SshPolicy {
        allow: SshAllow::default(),
        deny: &deny,
        approve: &[],
    };
    let denied = matches!(
        ssh::decide(policy, SshOperation::Exec { command }),
        Decision::Deny { .. }
    );
    if !glob.contains('*') {
        assert_eq!(
            denied,
            glob == command,
            "a literal rule matches only itself"
        );
    }
    if glob.chars().all(|c| c == '*') && !glob.is_empty() {
        assert!(denied, "a rule of stars matches every command");
    }
    let _ = sluice::config::parse_host_key(key);
}

/// Builders for hand-made seed inputs (used by the replay test to check
/// that the committed seeds still exercise the deep paths).
pub mod seeds {
    use super::*;

    /// A typed frontend/backend message.
    pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(tag);
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(body);
        out.to_vec()
    }

    /// A StartupMessage 3.0 with `params`.
    pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i32(3 << 16);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        out.to_vec()
    }

    /// A RowDescription for text columns `names`.
    pub fn row_description(names: &[&str]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(names.len() as i16);
        for n in names {
            b.put_slice(n.as_bytes());
            b.put_u8(0);
            b.put_u32(16384); // table oid
            b.put_i16(1); // attnum
            b.put_u32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0);
        }
        message(b'T', &b)
    }

    /// A DataRow of `values`.
    pub fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        message(b'D', &b)
    }
}

/// What an agent sends a MySQL service: frames reassembled by the packet
/// decoder, each read as an `SSLRequest` / `HandshakeResponse41` and as a
/// command; `COM_QUERY` text is classified and read as a `KILL`. A parsed
/// response must parse again after encoding, with the same user and
/// database.
pub fn mysql_client(data: &[u8]) {
    use sluice_mysql::handshake::{ClientHello, HandshakeResponse};
    for payload in mysql_packets(data) {
        if let Ok(ClientHello::Response(r)) = ClientHello::decode(&payload) {
            let again = HandshakeResponse::decode(&r.encode()).expect("an encoded response parses");
            assert_eq!((&again.user, &again.database), (&r.user, &r.database));
        }
        if let Ok(sluice_mysql::command::Command::Query(sql)) =
            sluice_mysql::command::Command::decode(&payload)
        {
            mysql_classify(sql);
            let _ = sluice_mysql::command::parse_kill(&String::from_utf8_lossy(sql));
        }
    }
}

/// What an upstream server sends: every packet read as a handshake, an
/// authentication packet, OK/ERR/EOF and a column definition (which must
/// round-trip), and masked as a text and a binary row.
pub fn mysql_server(data: &[u8]) {
    use sluice_mysql::{
        handshake::{AuthPacket, InitialHandshake},
        response::{EofPacket, ErrPacket, OkPacket},
        resultset::{mask_binary_row, mask_text_row, ColumnDefinition},
    };
    for payload in mysql_packets(data) {
        if let Ok(h) = InitialHandshake::decode(&payload) {
            let _ = InitialHandshake::decode(&h.encode());
        }
        let _ = AuthPacket::decode(payload.clone().freeze());
        let _ = (
            OkPacket::decode(&payload),
            ErrPacket::decode(&payload),
            EofPacket::decode(&payload),
        );
        if let Ok(c) = ColumnDefinition::decode(&payload) {
            assert_eq!(
                ColumnDefinition::decode(&c.encode()).expect("re-encoded"),
                c
            );
        }
        let columns = usize::from(payload.first().copied().unwrap_or(0) % 16);
        let masked: Vec<bool> = (0..columns).map(|i| i % 2 == 0).collect();
        let _ = mask_text_row(&payload, &masked);
        let types: Vec<u8> = payload.iter().skip(1).take(columns).copied().collect();
        let _ = mask_binary_row(&payload, &types, &masked[..types.len()]);
    }
}

/// SQL text through the MySQL classifier, in both string-escape modes,
/// and the masked-column exposure check.
pub fn mysql_classify(data: &[u8]) {
    use sluice_mysql::classify::{check_exposure, classify, Escapes};
    let text = String::from_utf8_lossy(&data[..data.len().min(MAX_SQL)]);
    let _ = classify(&text, Escapes::Backslash);
    let _ = classify(&text, Escapes::NoBackslash);
    let _ = check_exposure(&text, Escapes::Backslash, &["ssn".to_string()]);
}

/// The logical packets of `data` (at most [`MAX_MESSAGES`], 1 MiB each).
fn mysql_packets(data: &[u8]) -> Vec<BytesMut> {
    let mut decoder = sluice_mysql::PacketDecoder::new(1 << 20);
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while out.len() < MAX_MESSAGES {
        match decoder.decode(&mut buf) {
            Ok(Some(p)) => out.push(BytesMut::from(&p.payload[..])),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Kubernetes exec output: WebSocket frames read as they pass
/// ([`Frames`]) give the same stdout/stderr bytes however the stream is
/// cut into reads (the first byte sets the read size), and never panic.
pub fn kube_stream(data: &[u8]) {
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let joined = |pieces: Vec<(u8, bytes::Bytes)>| {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        for (channel, bytes) in pieces {
            match out.last_mut() {
                Some((c, b)) if *c == channel => b.extend_from_slice(&bytes),
                _ => out.push((channel, bytes.to_vec())),
            }
        }
        out
    };
    let whole = joined(Frames::default().feed(stream));
    let mut frames = Frames::default();
    let chunked = stream
        .chunks(usize::from(size).max(1))
        .flat_map(|c| frames.feed(c))
        .collect();
    assert_eq!(whole, joined(chunked), "reads of {size} bytes");
}

/// Kubernetes: a request read as the API server reads it (first line the
/// method, second the request target; bit 0 of the selector: a protocol
/// upgrade) never panics, a resource request names a resource and one
/// known verb first; with bit 1, the rest is a response for Secrets whose
/// masking is idempotent (so leaves no `data` value unmasked).
pub fn kube_request(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & 2 != 0 {
        let Ok((out, _)) = kube_mask::mask_document(rest) else {
            return;
        };
        // Idempotence also means no `data` value is left unmasked: one
        // would change on the second pass.
        let (again, _) = kube_mask::mask_document(&out).expect("masked output is JSON");
        assert_eq!(out, again, "masking is idempotent");
        return;
    }
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET").trim();
    let target = lines.next().unwrap_or("/").trim();
    let Ok(request) = hyper::Request::builder()
        .method(method)
        .uri(target)
        .body(())
    else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let Ok(info) = kube::read(&parts, selector & 1 != 0) else {
        return;
    };
    let _ = info.summary();
    if let Some(r) = info.resource() {
        assert!(
            !r.resource.is_empty(),
            "a resource request names its resource"
        );
        const VERBS: [&str; 9] = [
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
            "proxy",
        ];
        assert!(VERBS.contains(&info.verb()), "unknown verb {}", info.verb());
    }
}
