//! The eBPF 4-tuple map: Sluice deletes a connection's entry once it has
//! read it, so the map holds only connections not yet accepted; a
//! connection without an entry is counted in /metrics and logged.
use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
};

use sluice_tests::{poll, ServiceSpec, Stack};

use crate::WAIT;

/// Opens N plain TCP connections to argv[1]:argv[2] and holds them until
/// stdin closes.
const HOLD: &str = r#"
import socket, sys
conns = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) for _ in range(int(sys.argv[3]))]
print("held", len(conns), flush=True)
sys.stdin.read()
"#;

fn scrape(port: u16) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn tuple_entries_are_deleted_once_read_and_a_lookup_miss_shows_in_metrics() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stack = Stack::builder("tuple-map")
        .gateway(&format!("metrics = \"127.0.0.1:{port}\""))
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .start()
        .unwrap();
    let upstream = stack.upstream("payments-api").addr();

    // Five agent connections, held open: once Sluice has accepted them the
    // map is empty again (before, each entry stayed until its close).
    let mut agent = stack
        .sluice
        .exec_spawn(
            stack.agent(),
            &[
                "python3",
                "-c",
                HOLD,
                &upstream.ip().to_string(),
                &upstream.port().to_string(),
                "5",
            ],
        )
        .unwrap();
    let mut line = String::new();
    BufReader::new(agent.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held 5");
    poll(
        "the 4-tuple map empties while connections are open",
        WAIT,
        || (value(&scrape(port), "sluice_ebpf_tracked_connections") == Some(0.0)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", scrape(port)));

    // A connection straight to the listener has no entry: counted, warned.
    let mut direct = TcpStream::connect(stack.sluice.listen).unwrap();
    let _ = direct.write_all(b"x");
    poll("the lookup miss in /metrics", WAIT, || {
        (value(&scrape(port), "sluice_ebpf_tuple_misses_total") >= Some(1.0)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", scrape(port)));
    assert!(
        stack
            .sluice
            .daemon_log()
            .contains("connection without an eBPF 4-tuple entry"),
        "warned in the log"
    );
    drop(agent.stdin.take());
    agent.wait().unwrap();
}
