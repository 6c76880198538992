#!/usr/bin/env python3
"""Writes the hand-made seed corpora under fuzz/corpus/<target>/.

Run from anywhere: `python3 fuzz/make_seeds.py`. The files are committed;
re-running rewrites them identically. Regression inputs (crashes found by
fuzzing) live next to them as `regress-*` and are never rewritten here.
"""
import base64
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def msg(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


def startup(params, version=3 << 16):
    body = struct.pack(">i", version)
    for k, v in params:
        body += cstr(k) + cstr(v)
    body += b"\0"
    return struct.pack(">i", len(body) + 4) + body


def special(code, extra=b""):
    body = struct.pack(">i", code) + extra
    return struct.pack(">i", len(body) + 4) + body


def bind(portal, stmt, formats, params, results):
    body = cstr(portal) + cstr(stmt) + struct.pack(">h", len(formats))
    body += b"".join(struct.pack(">h", f) for f in formats)
    body += struct.pack(">h", len(params))
    for p in params:
        body += struct.pack(">i", -1) if p is None else struct.pack(">i", len(p)) + p
    body += struct.pack(">h", len(results)) + b"".join(struct.pack(">h", f) for f in results)
    return msg(b"B", body)


def row_description(cols):
    body = struct.pack(">h", len(cols))
    for name, oid, fmt in cols:
        body += cstr(name) + struct.pack(">IhIhih", 16384, 1, oid, -1, -1, fmt)
    return msg(b"T", body)


def data_row(values):
    body = struct.pack(">h", len(values))
    for v in values:
        body += struct.pack(">i", -1) if v is None else struct.pack(">i", len(v)) + v
    return msg(b"D", body)


def error_response(code, text):
    body = b"SERROR\0VERROR\0C" + cstr(code) + b"M" + cstr(text) + b"\0"
    return msg(b"E", body)


LOGIN = startup([("user", "agent"), ("database", "billing"), ("application_name", "psql")])

PG_FRONTEND = {
    "simple-query": LOGIN + msg(b"Q", cstr("SELECT id, name, ssn FROM customers")) + msg(b"X", b""),
    "multi-statement": LOGIN + msg(b"Q", cstr("select 1; drop/**/table customers; WITH d AS (DELETE FROM t RETURNING *) SELECT 1")),
    "extended": LOGIN
    + msg(b"P", cstr("s1") + cstr("SELECT ssn FROM customers WHERE id = $1") + struct.pack(">hI", 1, 23))
    + bind("p1", "s1", [0], [b"1"], [1])
    + msg(b"D", b"P" + cstr("p1"))
    + msg(b"E", cstr("p1") + struct.pack(">i", 0))
    + msg(b"C", b"S" + cstr("s1"))
    + msg(b"S", b""),
    "copy-in": LOGIN
    + msg(b"Q", cstr("COPY customers FROM STDIN"))
    + msg(b"d", b"4\tEve\t000-00-0000\n")
    + msg(b"c", b"")
    + msg(b"f", cstr("client gave up")),
    "ssl-then-startup": special(80877103) + LOGIN + msg(b"Q", cstr("SHOW server_version")),
    "gss-then-startup": special(80877104) + LOGIN + msg(b"H", b""),
    "cancel": special(80877102, struct.pack(">ii", 1234, 5678)),
    "protocol-3.2-options": startup([("user", "u"), ("_pq_.compression", "on")], (3 << 16) | 2) + msg(b"S", b""),
    "no-user": startup([("database", "billing")]),
    "bogus-version": startup([("user", "u")], (1234 << 16) | 5679),
    "bad-lengths": LOGIN + b"Q" + struct.pack(">i", 3) + b"Q" + struct.pack(">i", -1),
    "huge-length": LOGIN + b"Q" + struct.pack(">i", 0x7FFFFFFF),
    "function-call": LOGIN + msg(b"F", struct.pack(">Ihhhih", 1598, 0, 1, 4, 1, 0)[:14]),
    "do-block": LOGIN + msg(b"Q", cstr("DO $$ BEGIN EXECUTE 'DROP TABLE customers'; END $$")),
    "blank-query": LOGIN + msg(b"Q", cstr("   ")) + msg(b"Q", cstr("")),
    "empty-parse": LOGIN + msg(b"P", cstr("") + cstr("") + struct.pack(">h", 0)) + msg(b"S", b""),
}

SSN = [("id", 23, 0), ("name", 25, 0), ("ssn", 25, 0)]
PG_BACKEND = {
    # selector byte: bits 0-1 masks (0 = ssn), bits 2-3 formats (0 = described)
    "simple-result": b"\x00"
    + row_description(SSN)
    + data_row([b"1", b"Ada Lovelace", b"123-45-6789"])
    + data_row([b"3", b"Edsger Dijkstra", None])
    + msg(b"C", cstr("SELECT 2"))
    + msg(b"Z", b"I"),
    "binary-formats": bytes([2 << 2])
    + row_description([("id", 23, 1), ("ssn", 1043, 1), ("card_number", 20, 1)])
    + data_row([b"\0\0\0\1", b"123-45-6789", b"\0\0\0\0\0\0\0\7"]),
    "two-masks": b"\x01"
    + row_description([("SSN", 25, 0), ("card_number", 25, 0)])
    + data_row([b"123-45-6789", b"4111111111111111"]),
    "error-then-ready": b"\x00" + error_response("22P02", 'invalid input syntax for type integer: "123-45-6789"') + msg(b"Z", b"E"),
    "column-count-mismatch": b"\x00" + row_description(SSN) + data_row([b"1"]),
    "notice-and-notify": b"\x00"
    + msg(b"N", b"SNOTICE\0C00000\0Mhello\0\0")
    + msg(b"A", struct.pack(">i", 42) + cstr("chan") + cstr("123-45-6789")),
}

TOKEN = "slt_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"
OTHER = "slt_" + "Z" * 40
HTTP = {
    # selector byte (secret shape), method, uri, header lines
    "bearer": b"\x00GET\n/v1/charges\nauthorization: Bearer " + TOKEN.encode() + b"\nhost: api.payments.test",
    "api-key": b"\x01POST\n/v1/refunds?limit=1\nx-api-key: " + TOKEN.encode(),
    "basic": b"\x00GET\n/\nauthorization: Basic " + base64.b64encode(("user:" + TOKEN).encode()),
    "query": b"\x01GET\n/v1/x?a=1&api_key=" + TOKEN.encode() + b"&b=2\n",
    "query-encoded": b"\x00GET\n/v1/x?k=%73lt_" + TOKEN[4:].encode() + b"\n",
    "ambiguous": b"\x00GET\n/x?k=" + OTHER.encode() + b"\nx-api-key: " + TOKEN.encode(),
    "duplicate-authorization": b"\x02GET\n/\nauthorization: Bearer " + TOKEN.encode() + b"\nauthorization: Basic "
    + base64.b64encode(("u:" + TOKEN).encode()),
    "two-tokens-one-header": b"\x03GET\n/\nx-api-key: " + TOKEN.encode() + b" " + OTHER.encode(),
}

JSON = {
    "nested": b'\x01{"customer":{"ssn":"123-45-6789","card":{"number":"4111111111111111","exp":"12/30"},"name":"Ann"}}',
    "arrays": b'\x00[{"ssn":"1"},{"ssn":null},{"other":{"ssn":["x","y"]}}]',
    "escaped-key": b'\x00{"\\u0073sn":"123-45-6789","ssn":"dup"}',
    "numbers": b'\x02{"a":{"b":{"c":1e308}},"":[0.1,-0.0,12345678901234567890]}',
    "deep": b"\x00" + b'{"a":' * 100 + b"1" + b"}" * 100,
}

SQL = {
    "select": b"SELECT id, name, ssn FROM customers WHERE id = $1",
    "cte-delete": b"WITH d AS (DELETE FROM customers RETURNING *) SELECT * FROM d",
    "do-execute": b"DO $$ BEGIN EXECUTE 'DROP TABLE customers'; END $$",
    "comment-drop": b"drop/**/table customers; -- x",
    "copy-program": b"COPY customers TO PROGRAM 'cat > /tmp/x'",
    "rule": b"CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM customers",
    "explain-prepare": b"EXPLAIN ANALYZE PREPARE p AS UPDATE customers SET ssn = NULL",
    "merge": b"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
    "garbage": b"selec 1 from",
    "nested": b"SELECT " + b"(" * 200 + b"1" + b")" * 200,
    # No tokens at all: pg_query::scan_tokens aborted on these (issue: one agent stops the gateway).
    "empty": b"",
    "whitespace": b"   \t\r\n  ",
    "comment-only": b" /* only */ -- a comment\n",
    "semicolons": b" ; ;\n",
    "prepare-execute": b"PREPARE p AS DELETE FROM customers WHERE id = $1; EXECUTE p(3); DEALLOCATE p",
    "functions": b"WITH x AS (SELECT pg_catalog.lo_unlink(1)) SELECT (SELECT pg_terminate_backend(7)) FROM x",
    "comment-on": b"COMMENT ON TABLE customers IS 'x'",
}

SCRAM = {
    # client-first-message \n client-final-message
    "exchange": b"n,,n=,r=rOprNGfwEbeRWgbNEkqO\nc=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    "channel-binding": b"p=tls-server-end-point,,n=,r=abc\n",
    "y-flag": b"y,,n=agent,r=abcdef\nc=eSws,r=abcdef,p=AAAA",
    "bad-utf8": b"n,,n=\xff,r=a\n\xff",
}

KUBE = {
    # selector byte, then "METHOD\ntarget"; selector bit 1: a Secret response body
    "list-pods": b"\x00GET\n/api/v1/namespaces/default/pods?limit=500",
    "watch-param": b"\x00GET\n/api/v1/namespaces/default/pods?watch=true&fieldSelector=metadata.name%3Dweb-1",
    "watch-verb": b"\x00GET\n/api/v1/watch/namespaces/default/pods/web-1",
    "exec-upgrade": b"\x01GET\n/api/v1/namespaces/default/pods/web-1/exec?command=echo&command=hello",
    "delete-namespace": b"\x00DELETE\n/api/v1/namespaces/kube-system",
    "named-group": b"\x00PATCH\n/apis/apps/v1/namespaces/prod/deployments/web/scale",
    "non-resource": b"\x00GET\n/openapi/v3/apis/apps/v1",
    "encoded-slash": b"\x00GET\n/api/v1/namespaces/default/pods/a%2Fb",
    "secret-list": b'\x02{"kind":"SecretList","items":[{"data":{"a":"Yg==","n":null},"stringData":{"s":"t"},'
    b'"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\\"data\\":{\\"a\\":\\"Yg==\\"}}"}}}]}',
    "watch-event": b'\x02{"type":"ADDED","object":{"kind":"Secret","data":{"k":"dg=="}}}',
}

# deny glob, command line, upstream_host_key (known_hosts forms)
SSH_KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
SSH_RULES = {
    "push-held": b"git-receive-pack *\ngit-receive-pack 'repo.git'\n" + SSH_KEY,
    "rm-denied": b"rm *\nrm -rf /srv\n[git.internal]:2222,10.0.0.5 " + SSH_KEY + b" root@git",
    "literal": b"id\nid\nssh-ed25519 not-base64",
    "stars": b"***\n\n",
}


def write(target, seeds):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, "seed-" + name), "wb") as f:
            f.write(data)


write("pg_frontend", PG_FRONTEND)
write("pg_backend_mask", PG_BACKEND)
write("http_token", HTTP)
write("json_mask", JSON)
write("sql_classify", SQL)
write("scram", SCRAM)
write("kube_request", KUBE)
write("ssh_rules", SSH_RULES)
