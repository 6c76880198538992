//! A million masked MySQL rows stream through Sluice (issue 12): they all
//! arrive, every `ssn` masked, while Sluice's memory stays flat.
use std::time::{Duration, Instant};

use sluice_tests::{poll, Stack};

use super::mysql::{orders_db, MY};
use crate::{events, sessions_of, with_rss_sampled};

#[test]
fn a_million_masked_rows_arrive_complete_while_sluice_grows_under_16_mib() {
    let stack = Stack::builder("mysql-million-rows")
        .service(orders_db())
        .start()
        .unwrap();
    let token = stack.token(MY).unwrap();
    let upstream = stack.mariadb(MY).addr();
    let pid = stack.sluice.pid().unwrap();
    // MariaDB's Sequence engine makes the rows; the agent counts them,
    // sums `seq` and checks every masked value, so one line comes back.
    let script = r#"mariadb --host "$0" --port "$1" --user=agent --password="$2" --skip-ssl \
        --quick --batch --skip-column-names -D billing \
        -e "SELECT seq, REPEAT('x', 100) AS ssn FROM seq_1_to_1000000" \
        | awk -F'\t' '{ n++; s += $1; if ($2 != "****") bad++ } END { printf "%d %.0f %d\n", n, s, bad }'"#;
    let started = Instant::now();
    let (out, rss) = with_rss_sampled(pid, || {
        stack
            .sluice
            .exec_with_timeout(
                stack.agent(),
                &[
                    "sh",
                    "-c",
                    script,
                    &upstream.ip().to_string(),
                    &upstream.port().to_string(),
                    &token,
                ],
                Duration::from_secs(300),
            )
            .unwrap()
    });
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1000000 500000500000 0",
        "rows, sum of seq, unmasked values; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("1,000,000 masked rows in {took:.1?}; sluice {rss:?}");
    rss.assert_streamed();
    // The `masked` line is written by the recorder's next batch after the
    // result ends, which may come after the client has exited.
    let masked = poll("the masked line", Duration::from_secs(10), || {
        let sessions = sessions_of(&stack, MY);
        events(sessions.first()?, "masked")
            .iter()
            .any(|m| m["fields"][0] == "ssn" && m["count"] == 1_000_000)
            .then_some(())
    });
    assert!(
        masked.is_ok(),
        "{:?}",
        events(&sessions_of(&stack, MY)[0], "masked")
    );
    stack.assert_no_secret_leaked();
}
