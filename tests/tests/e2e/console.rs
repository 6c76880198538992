//! The web console (issue #17, DESIGN.md §9) in a real browser: headless
//! chromium over WebDriver signs in through the test OIDC issuer
//! (authorization code + PKCE), sees a held `DELETE` appear without
//! reloading, approves it and the agent's psql finishes; denies another
//! with a reason and the agent gets 42501 with it; replays the session.
//! Screenshots of the approvals page and of the replay go to the test's
//! temp dir, and to `docs/` when `SLUICE_UPDATE_SCREENSHOTS=1`.
use std::path::{Path, PathBuf};

use sluice_tests::{browser::Browser, console::ConsoleStack};

use crate::{approvals::position, events, WAIT};

/// The statements the tests hold.
const DELETE_ID_3: &str = "DELETE FROM customers WHERE id = 3";
const DELETE_ID_2: &str = "DELETE FROM customers WHERE id = 2";

/// Writes `name` into `dir` and, with `SLUICE_UPDATE_SCREENSHOTS=1`, also
/// into the checkout's `docs/` (the README shows those).
fn screenshot(browser: &Browser, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    browser.screenshot(&path).unwrap();
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{name} is a real PNG"
    );
    if std::env::var("SLUICE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&path, docs.join(name)).unwrap();
    }
    path
}

#[test]
fn an_approver_signs_in_sees_a_held_delete_appear_live_approves_it_and_denies_another_with_a_reason(
) {
    let console = ConsoleStack::start("console-approve");
    let stack = &console.stack;
    let browser = console.browser();
    console.sign_in(&browser, "alice");
    browser.wait_for("#pending", WAIT).unwrap();
    assert!(browser.source().unwrap().contains("No pending approvals"));

    let token = stack.token(crate::DB).unwrap();
    let conninfo = stack.pg_conninfo(crate::DB, &token, "sslmode=disable");
    // A mark on this page: still there later means the page never reloaded.
    let mark = "arguments[0](window.sluiceMark === 'set')";
    browser
        .execute_async("window.sluiceMark = 'set'; arguments[0](true)", vec![])
        .unwrap();
    let approved_id = std::thread::scope(|s| {
        let agent = s.spawn(|| stack.psql(&conninfo, &["-c", DELETE_ID_3]).unwrap());
        let row = browser.wait_for("#pending tr[id^='apr_']", WAIT).unwrap();
        let shown = std::time::Instant::now();
        assert_eq!(
            browser.execute_async(mark, vec![]).unwrap(),
            true,
            "the held DELETE arrived over the event stream, without a reload"
        );
        assert!(
            row.contains(DELETE_ID_3) && row.contains(stack.agent()),
            "{row}"
        );
        let id = browser
            .execute_async(
                "arguments[0](document.querySelector(\"#pending tr[id^='apr_']\").id)",
                vec![],
            )
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        screenshot(&browser, &console.dir(), "console-approvals.png");
        // Slack hears of it too, with a link to the console.
        let slack = sluice_tests::poll(
            "the Slack message",
            std::time::Duration::from_secs(2),
            || {
                console
                    .slack
                    .requests()
                    .into_iter()
                    .find(|r| r.path() == "/slack")
            },
        )
        .unwrap_or_else(|e| panic!("{e:#} ({:?} after the row showed)", shown.elapsed()));
        let text = String::from_utf8_lossy(&slack.body).into_owned();
        assert!(
            text.contains(&id) && text.contains(&console.url("/approvals")),
            "{text}"
        );
        assert!(
            !agent.is_finished(),
            "psql waits while the approval is pending"
        );
        browser.click(&format!("tr#{id} button.approve")).unwrap();
        let res = agent.join().unwrap();
        res.assert_ok();
        assert_eq!(res.stdout.trim(), "DELETE 1");
        id
    });
    browser.wait_for("#pending td.muted", WAIT).unwrap();
    let session = crate::approvals::session_of_approval(stack, &approved_id);
    assert!(position(&session, "approval_wait") < position(&session, "approved"));
    assert_eq!(
        events(&session, "approved")[0]["by"],
        console.subject("alice")
    );

    let reason = "customer 2 has open invoices";
    let res = std::thread::scope(|s| {
        let agent = s.spawn(|| {
            stack
                .psql(
                    &conninfo,
                    &["-At", "-v", "VERBOSITY=verbose", "-c", DELETE_ID_2],
                )
                .unwrap()
        });
        browser
            .wait_for("#pending tr[id^='apr_'] input[name=reason]", WAIT)
            .unwrap();
        browser
            .type_into("#pending input[name=reason]", reason)
            .unwrap();
        browser.click("#pending button.deny").unwrap();
        agent.join().unwrap()
    });
    let error = res
        .stderr
        .lines()
        .find(|l| l.starts_with("ERROR:"))
        .unwrap_or_else(|| panic!("no ERROR: {}", res.stderr));
    assert!(error.contains("42501") && error.contains(reason), "{error}");
    assert_eq!(
        stack.postgres(crate::DB).customers_count().unwrap(),
        Some(2)
    );
    let rejected = stack
        .sluice
        .wait_for_event("rejected", WAIT, |e| e["event"] == "rejected")
        .unwrap();
    assert_eq!(rejected["by"], console.subject("alice"));

    // The sessions list, filtered to sessions that waited for an approval.
    let session_id = session[0]["session"].as_str().unwrap();
    browser
        .goto(&console.url("/sessions?service=billing-db&event=approval_wait&since=1h"))
        .unwrap();
    let listed = browser.wait_for("table.sessions tbody", WAIT).unwrap();
    assert!(listed.contains(session_id), "{listed}");
    browser
        .goto(&console.url("/sessions?event=denied"))
        .unwrap();
    assert!(browser
        .wait_for("table.sessions tbody", WAIT)
        .unwrap()
        .contains("No sessions match"));

    // The replay of the approved session: its SQL, held and approved.
    browser
        .goto(&console.url(&format!("/sessions/{session_id}")))
        .unwrap();
    let transcript = browser.wait_for("#transcript", WAIT).unwrap();
    assert!(transcript.contains(DELETE_ID_3), "{transcript}");
    assert!(
        transcript.contains(&format!("approved by {}", console.subject("alice"))),
        "{transcript}"
    );
    screenshot(&browser, &console.dir(), "console-replay.png");

    // A session with a terminal stream (asciicast v2 beside its record, as
    // SSH shells write it) plays back in the page, at its pace.
    let cast = stack
        .sluice
        .log_dir
        .join("sessions")
        .join(format!("{session_id}.cast"));
    std::fs::write(
        &cast,
        "{\"version\": 2, \"width\": 80, \"height\": 24}\n\
         [0.1, \"o\", \"$ psql\\r\\n\"]\n[0.4, \"o\", \"\\u001b[1mDELETE 1\\u001b[0m\\r\\n\"]\n",
    )
    .unwrap();
    browser
        .goto(&console.url(&format!("/sessions/{session_id}")))
        .unwrap();
    browser.wait_for("#play", WAIT).unwrap();
    browser.click("#play").unwrap();
    browser
        .wait_for("#terminal[data-played=true]", WAIT)
        .unwrap();
    let played = browser.wait_for("#terminal", WAIT).unwrap();
    assert_eq!(
        played.trim(),
        "$ psql\nDELETE 1",
        "output events in order, escapes dropped"
    );

    let actions = console.actions();
    assert!(
        actions
            .iter()
            .any(|a| a["action"] == "approve" && a["approval"] == approved_id.as_str()),
        "{actions:#?}"
    );
    assert!(actions
        .iter()
        .any(|a| a["action"] == "deny" && a["reason"] == reason));
    console.assert_nothing_leaked();
}
