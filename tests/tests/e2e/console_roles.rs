//! Who may act in the console (issue #17): someone outside a service's
//! approvers sees its held operation but gets no buttons, and a forged
//! approve from their browser gets 403; a form without the CSRF token
//! gets 403; without a session cookie a page redirects to sign-in.
use sluice_tests::console::ConsoleStack;

use crate::WAIT;

const DELETE_ID_1: &str = "DELETE FROM customers WHERE id = 1";

/// `fetch(path, POST form)` from the signed-in page; the status.
const POST_FORM: &str = "const [path, fields, done] = arguments; \
    fetch(path, {method: 'POST', body: new URLSearchParams(fields), credentials: 'same-origin', redirect: 'manual'}) \
    .then(r => done(r.status), e => done(String(e)));";

#[test]
fn a_viewer_outside_approvers_sees_the_hold_without_buttons_and_forged_or_csrf_less_posts_get_403()
{
    let console = ConsoleStack::start("console-roles");
    let stack = &console.stack;

    // No session cookie: pages redirect to sign-in, actions are refused.
    let page = console.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &console.url("/approvals"),
    ]);
    assert_eq!(page, format!("303 {}", console.url("/signin")));
    let post = console.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "--data",
        "csrf=x",
        &console.url("/approvals/apr_x/approve"),
    ]);
    assert_eq!(post, "403");

    let browser = console.browser();
    console.sign_in(&browser, "bob");
    let token = stack.token(crate::DB).unwrap();
    let conninfo = stack.pg_conninfo(crate::DB, &token, "sslmode=disable");
    std::thread::scope(|s| {
        let agent = s.spawn(|| stack.psql(&conninfo, &["-c", DELETE_ID_1]).unwrap());
        let row = browser.wait_for("#pending tr[id^='apr_']", WAIT).unwrap();
        assert!(
            row.contains(DELETE_ID_1) && row.contains("awaiting an approver"),
            "{row}"
        );
        assert_eq!(
            browser.count("#pending button").unwrap(),
            0,
            "no buttons for bob"
        );
        let pending = stack.sluice.wait_for_pending(DELETE_ID_1, WAIT).unwrap();
        let id = pending["id"].as_str().unwrap();

        // bob's own CSRF token (from the sign-out form), on a forged approve.
        let csrf = browser
            .execute_async(
                "arguments[0](document.querySelector('input[name=csrf]').value)",
                vec![],
            )
            .unwrap();
        let forged = browser
            .execute_async(
                POST_FORM,
                vec![
                    format!("/approvals/{id}/approve").into(),
                    serde_json::json!({"csrf": csrf}),
                ],
            )
            .unwrap();
        assert_eq!(forged, 403, "a viewer's approve is refused");
        let no_csrf = browser
            .execute_async(
                POST_FORM,
                vec![
                    format!("/approvals/{id}/approve").into(),
                    serde_json::json!({}),
                ],
            )
            .unwrap();
        assert_eq!(no_csrf, 403, "no CSRF token, no action");
        assert_eq!(
            stack.sluice.approval(id).unwrap().unwrap()["status"],
            "pending",
            "nothing was decided"
        );
        assert!(!agent.is_finished());

        // The CLI still decides, on the same state; the row leaves the page.
        stack.sluice.approve(id).unwrap();
        agent.join().unwrap().assert_ok();
        browser.wait_for("#pending td.muted", WAIT).unwrap();
    });
    // bob sees tokens but may not revoke them.
    browser.goto(&console.url("/tokens")).unwrap();
    assert!(browser
        .wait_for("table.tokens", WAIT)
        .unwrap()
        .contains("billing-db"));
    assert_eq!(browser.count("table.tokens button").unwrap(), 0);
    browser.click("header button[type=submit]").unwrap();
    browser.wait_for("a[href='/signin']", WAIT).unwrap();

    // carol, an admin, revokes the agent's token: its next statement fails.
    console.sign_in(&browser, "carol");
    browser.goto(&console.url("/tokens")).unwrap();
    browser.wait_for("table.tokens button.deny", WAIT).unwrap();
    browser.click("table.tokens button.deny").unwrap();
    let revoked = browser.wait_for("table.tokens tbody", WAIT).unwrap();
    assert!(revoked.contains("revoked"), "{revoked}");
    let refused = stack.psql(&conninfo, &["-c", "SELECT 1"]).unwrap();
    assert_ne!(
        refused.exit, 0,
        "a revoked token logs in no more: {}",
        refused.stderr
    );

    let actions = console.actions();
    let bobs: Vec<_> = actions
        .iter()
        .filter(|a| a["action"] == "approve" && a["subject"] == console.subject("bob"))
        .collect();
    assert_eq!(
        bobs.len(),
        1,
        "the CSRF-less POST never got as far: {actions:#?}"
    );
    assert_eq!(bobs[0]["outcome"], "forbidden");
    assert!(
        actions.iter().any(|a| a["action"] == "revoke"
            && a["outcome"] == "done"
            && a["subject"] == console.subject("carol")),
        "{actions:#?}"
    );
    console.assert_nothing_leaked();
}
