//! Notifications where people work (issue 17, `[[notify]]`): a held
//! refund and a denial reach a Slack-format and a signed JSON webhook
//! within 2 s, from a background task, with no secret in any message.
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use sluice_tests::{
    poll, redteam, stack::next_upstream_ip, RecordedRequest, ServiceSpec, Stack, Upstream,
};

use crate::{
    approvals::{refund_args, REFUNDS_NEED_APPROVAL},
    assert_status, bearer, WAIT,
};

const API: &str = "payments-api";
const API_HOST: &str = "api.payments.test";
const HMAC_SECRET: &str = "notify-hmac-value-3f9c2e";

/// The bodies the sink received at `path`, as JSON, with their requests.
fn received(sink: &Upstream, path: &str) -> Vec<(RecordedRequest, Value)> {
    sink.requests()
        .into_iter()
        .filter(|r| r.path() == path)
        .map(|r| {
            let v = serde_json::from_slice(&r.body).expect("notification bodies are JSON");
            (r, v)
        })
        .collect()
}

#[test]
fn a_held_refund_and_a_denial_reach_slack_and_signed_json_webhooks_within_two_seconds() {
    let mut stack = Stack::builder("notify-webhooks")
        .service(
            ServiceSpec::https(API, API_HOST)
                .extra(REFUNDS_NEED_APPROVAL)
                .extra(r#"deny = [{ method = "DELETE", path = "/v1/customers/*" }]"#),
        )
        .prepare()
        .unwrap();
    let sink = Upstream::http("hooks.test", next_upstream_ip()).unwrap();
    let base = format!("http://{}", sink.addr());
    redteam::append_config(
        &stack,
        &format!(
            r#"
[[notify]]
url = "{base}/slack/T0/B0"
format = "slack"
events = ["approval_wait", "denied"]

[[notify]]
url = "{base}/json"
format = "json"
events = ["approval_wait", "denied", "auth_fail"]
secret = "notify-hmac"
"#
        ),
    )
    .unwrap();
    stack.sluice.secret_put("notify-hmac", HMAC_SECRET).unwrap();
    stack
        .sluice
        .secret_put(&format!("{API}-key"), stack.secret(API))
        .unwrap();
    stack.sluice.start().unwrap();
    let token = stack.token(API).unwrap();

    // A denial: both webhooks hear of it.
    let res = stack
        .curl(&[
            "-X",
            "DELETE",
            "-H",
            &bearer(&token),
            &stack.url(API, "/v1/customers/1"),
        ])
        .unwrap();
    assert_status(&res, 403);
    poll("the denial at both webhooks", WAIT, || {
        (received(&sink, "/slack/T0/B0").len() == 1 && received(&sink, "/json").len() == 1)
            .then_some(())
    })
    .unwrap();

    // A held refund: the approval id reaches both within 2 s.
    std::thread::scope(|s| {
        let agent = s.spawn(|| stack.curl_raw(&refund_args(&stack, &token)).unwrap());
        let pending = stack
            .sluice
            .wait_for_pending("POST /v1/refunds", WAIT)
            .unwrap();
        let seen = Instant::now();
        let id = pending["id"].as_str().unwrap().to_string();
        poll(
            "the approval at both webhooks",
            Duration::from_secs(2),
            || {
                let slack = received(&sink, "/slack/T0/B0");
                let json = received(&sink, "/json");
                (slack
                    .iter()
                    .any(|(_, v)| v["text"].as_str().is_some_and(|t| t.contains(&id)))
                    && json.iter().any(|(_, v)| v["approval"] == id.as_str()))
                .then_some(())
            },
        )
        .unwrap_or_else(|e| panic!("{e} (after {:?})", seen.elapsed()));
        stack.sluice.approve(&id).unwrap();
        assert_status(&agent.join().unwrap(), 200);
    });

    let slack = received(&sink, "/slack/T0/B0");
    let wait = slack
        .iter()
        .map(|(_, v)| v["text"].as_str().unwrap().to_string())
        .find(|t| t.contains("apr_"))
        .unwrap();
    for want in [
        stack.agent(),
        API,
        "POST /v1/refunds",
        "sluice approve apr_",
    ] {
        assert!(wait.contains(want), "Slack message lacks {want:?}: {wait}");
    }
    let json = received(&sink, "/json");
    let events: Vec<&str> = json
        .iter()
        .map(|(_, v)| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["denied", "approval_wait"]);
    for (req, v) in &json {
        for field in ["ts", "session", "agent", "pid", "uid", "service", "event"] {
            assert!(v.get(field).is_some(), "json message lacks {field}: {v}");
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_SECRET.as_bytes()).unwrap();
        mac.update(&req.body);
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(req.header("x-sluice-signature"), Some(want.as_str()), "{v}");
    }
    for r in sink.requests() {
        let text = String::from_utf8_lossy(&r.body).into_owned() + &r.all_text();
        for secret in [stack.secret(API), HMAC_SECRET, token.as_str()] {
            assert!(
                !text.contains(secret),
                "a notification carried a secret: {text}"
            );
        }
    }
    stack.assert_no_secret_leaked();
}

#[test]
fn an_http_webhook_off_loopback_is_refused_at_load_naming_the_key() {
    let stack = Stack::builder("notify-config").prepare().unwrap();
    redteam::append_config(
        &stack,
        "\n[[notify]]\nurl = \"http://hooks.example/x\"\nformat = \"json\"\nevents = [\"denied\"]\n",
    )
    .unwrap();
    let out = stack.sluice.command(&["token", "list"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("notify[0].url") && stderr.contains("loopback"),
        "{stderr}"
    );
}
