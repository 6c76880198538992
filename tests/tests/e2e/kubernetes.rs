//! The Kubernetes API (issue #14, DESIGN.md §6): the real `kubectl`, with a
//! kubeconfig holding a Sluice token and Sluice's CA, against the API
//! server stand-in (`sluice_tests::kube_api`), which accepts only the real
//! bearer token from the vault.
use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Output},
};

use serde_json::Value;
use sluice_tests::{ServiceSpec, Stack};

use crate::{assert_no_token, events, Lines, WAIT};

pub(crate) const KUBE: &str = "prod-k8s";
pub(crate) const KUBE_HOST: &str = "kube.prod.test";
/// DESIGN.md §6's example rules, as far as the stand-in serves them.
pub(crate) const RULES: &str = r#"deny = [{ verb = "delete", resource = "namespaces" }, { verb = "*", resource = "secrets", namespace = "kube-system" }]
approve = [{ verb = "delete", resource = "pods", namespace = "default" }]"#;
/// [`RULES`], and `kubectl exec` held for approval too.
const RULES_EXEC_HELD: &str = r#"deny = [{ verb = "delete", resource = "namespaces" }, { verb = "*", resource = "secrets", namespace = "kube-system" }]
approve = [{ verb = "delete", resource = "pods", namespace = "default" }, { verb = "create", resource = "pods/exec" }]"#;
/// base64 of `****`.
const MASKED_DATA: &str = "KioqKg==";

pub(crate) fn kube_stack(label: &str, extra: &str) -> Stack {
    Stack::builder(label)
        .gateway(r#"approval_timeout = "60s""#)
        .service(ServiceSpec::kubernetes(KUBE, KUBE_HOST).extra(extra))
        .service(ServiceSpec::https("payments-api", "api.payments.test"))
        .start()
        .expect("start the stack")
}

/// `kubectl` as the agent, with a kubeconfig of its own.
pub(crate) struct Kubectl<'a> {
    stack: &'a Stack,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl<'a> Kubectl<'a> {
    /// A kubeconfig for service [`KUBE`] whose token is `token` and whose
    /// CA is Sluice's.
    pub(crate) fn new(stack: &'a Stack, token: &str) -> Kubectl<'a> {
        let dir = stack.dir().join(sluice_tests::unique_name("kubectl"));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("config");
        let ca = stack.sluice.ca_cert_path().unwrap();
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: prod\n  context:\n    cluster: prod\n    user: agent\n    namespace: default\ncurrent-context: prod\n",
            stack.kube(KUBE).server(),
            ca.display()
        );
        std::fs::write(&kubeconfig, config).unwrap();
        Kubectl {
            stack,
            kubeconfig,
            home: dir,
        }
    }

    fn argv<'s>(&self, args: &[&'s str]) -> Vec<&'s str> {
        let mut argv = vec!["kubectl", "--request-timeout=30s"];
        argv.extend_from_slice(args);
        argv
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            ("KUBECONFIG", self.kubeconfig.display().to_string()),
            ("HOME", self.home.display().to_string()),
        ]
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.stack.agent_with_hosts(&env, &self.argv(args)).unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.stack
            .spawn_agent_with_hosts(&env, &self.argv(args))
            .unwrap()
    }

    /// The Python client's exec of `command` in pod `pod` (always over
    /// WebSocket, `v4.channel.k8s.io`), spawned.
    pub(crate) fn python_exec(&self, pod: &str, command: &[&str]) -> Child {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let config = self.kubeconfig.display().to_string();
        let mut argv = vec!["python3", "-c", PYTHON_EXEC, &config, pod];
        argv.extend_from_slice(command);
        self.stack.spawn_agent_with_hosts(&env, &argv).unwrap()
    }

    /// Whether this kubectl runs exec over WebSocket (1.30 and later; older
    /// ones, such as Debian 12's kubernetes-client 1.20, use SPDY, which
    /// Sluice does not relay yet).
    fn execs_over_websocket(&self) -> bool {
        let out = assert_ok(&self.run(&["version", "--client", "-o", "json"]));
        let v: Value = serde_json::from_str(&out).unwrap();
        let minor = v["clientVersion"]["minor"].as_str().unwrap_or("0");
        minor.trim_end_matches('+').parse::<u32>().unwrap_or(0) >= 30
    }
}

/// The Python client's exec: kubeconfig `argv[1]`, pod `argv[2]` in
/// `default`, the command after; prints what the command printed.
const PYTHON_EXEC: &str = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(config_file=sys.argv[1])
out = stream(client.CoreV1Api().connect_get_namespaced_pod_exec, sys.argv[2], "default",
             command=sys.argv[3:], stdout=True, stderr=True, stdin=False, tty=False)
sys.stdout.write(out)
"#;

/// A raw HTTP/1.1 upgrade over TLS: host, port, CA file, token, path,
/// `Upgrade` value; prints the status line, then `relayed` when the
/// stand-in's SPDY mark came through.
const PYTHON_UPGRADE: &str = r#"
import socket, ssl, sys
host, port, ca, token, path, upgrade = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
              f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n".encode())
    data = b""
    while b"spdy-stream-relayed" not in data:
        if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 101"):
            break
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    print(data.split(b"\r\n")[0].decode())
    print("relayed" if b"spdy-stream-relayed" in data else "not relayed")
"#;

/// A spawned agent's stdout, once it ended successfully.
#[track_caller]
pub(crate) fn finished(child: Child) -> String {
    assert_ok(&child.wait_with_output().unwrap())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
pub(crate) fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

/// The `request` lines of service [`KUBE`] in the audit log.
fn kube_requests(stack: &Stack) -> Vec<Value> {
    let audit = stack.sluice.audit_events().unwrap();
    events(&audit, "request")
        .into_iter()
        .filter(|e| e["service"] == KUBE)
        .cloned()
        .collect()
}

/// Every request reached the stand-in with the real token and no trace of
/// the agent's.
pub(crate) fn assert_real_token_only(stack: &Stack) {
    let real = format!("Bearer {}", stack.secret(KUBE));
    for r in stack.kube(KUBE).requests() {
        assert_no_token(&r);
        assert_eq!(
            r.header("authorization"),
            Some(real.as_str()),
            "{}",
            r.target
        );
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn kubectl_and_python_get_watch_follow_logs_and_exec_through_sluice() {
    let stack = kube_stack("kube-read", RULES);
    let token = stack.token(KUBE).unwrap();
    let kubectl = Kubectl::new(&stack, &token);

    // get pods
    let out = assert_ok(&kubectl.run(&["get", "pods", "-o", "name"]));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["pod/web-1", "pod/web-2"]);
    let listed = kube_requests(&stack);
    assert!(
        listed.iter().any(|e| e["verb"] == "list"
            && e["resource"] == "pods"
            && e["namespace"] == "default"
            && e["status"] == 200),
        "{listed:?}"
    );

    // get pods -w: a watch event (a new pod only the watch shows) arrives
    // while the stream stays open.
    let mut watch = kubectl.spawn(&["get", "pods", "-w", "-o", "name"]);
    let lines = Lines::new(watch.stdout.take().unwrap());
    let mut seen = Vec::new();
    while !seen.iter().any(|l| l == "pod/web-3") {
        match lines.0.recv_timeout(WAIT) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no pod/web-3 from the watch; kubectl printed {seen:?}"),
        }
    }
    kill(watch);
    let watched = stack.kube(KUBE).requests().into_iter().any(|r| {
        r.path() == "/api/v1/namespaces/default/pods" && r.query("watch").as_deref() == Some("true")
    });
    assert!(watched, "kubectl's watch reached the API server");

    // logs -f: line 1 reaches the agent before the server sends line 2.
    let mut logs = kubectl.spawn(&["logs", "-f", "web-1"]);
    let lines = Lines::new(logs.stdout.take().unwrap());
    assert_eq!(lines.next("the first log line"), "log line 1");
    stack.kube(KUBE).release_logs();
    assert_eq!(lines.next("the second log line"), "log line 2");
    assert!(logs.wait().unwrap().success());

    // exec over WebSocket, its command recorded: the Python client's,
    // then kubectl's where it speaks WebSocket.
    assert_eq!(
        finished(kubectl.python_exec("web-1", &["echo", "hello"])),
        "hello\n"
    );
    let mut execs = 1;
    if kubectl.execs_over_websocket() {
        let out = assert_ok(&kubectl.run(&["exec", "web-1", "--", "echo", "hello"]));
        assert_eq!(out, "hello\n");
        execs += 1;
    } else {
        eprintln!(
            "note: this kubectl runs exec over SPDY; only the Python client's exec was tested"
        );
    }
    let exec = stack
        .kube(KUBE)
        .requests_to("GET", "/api/v1/namespaces/default/pods/web-1/exec");
    assert_eq!(
        exec.len(),
        execs,
        "each WebSocket exec reached the API server"
    );
    assert_eq!(
        exec[0].version, "HTTP/1.1",
        "exec runs over HTTP/1.1 upstream"
    );
    let command = stack
        .sluice
        .wait_for_event("the exec's command event", WAIT, |e| {
            e["event"] == "command"
        })
        .unwrap();
    assert_eq!(command["command"], "echo hello");
    assert!(kube_requests(&stack)
        .iter()
        .any(|e| e["resource"] == "pods/exec" && e["name"] == "web-1" && e["status"] == 101));

    assert_real_token_only(&stack);
    stack.assert_no_secret_leaked();
}

#[test]
fn delete_pod_and_exec_wait_for_approval_and_delete_namespace_is_denied() {
    let stack = kube_stack("kube-policy", RULES_EXEC_HELD);
    let token = stack.token(KUBE).unwrap();
    let kubectl = Kubectl::new(&stack, &token);
    let api = stack.kube(KUBE);
    let pod_path = "/api/v1/namespaces/default/pods/web-1";

    let mut delete = kubectl.spawn(&["delete", "pod", "web-1", "--wait=false"]);
    let pending = stack
        .sluice
        .wait_for_pending("delete pods web-1 -n default", WAIT)
        .unwrap();
    assert!(
        api.requests_to("DELETE", pod_path).is_empty(),
        "held, not sent"
    );
    stack
        .sluice
        .approve(pending["id"].as_str().unwrap())
        .unwrap();
    let mut out = String::new();
    delete
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        delete.wait().unwrap().success(),
        "kubectl delete pod: {out}"
    );
    assert!(out.contains("pod \"web-1\" deleted"), "{out}");
    assert_eq!(api.requests_to("DELETE", pod_path).len(), 1, "deleted once");
    assert_eq!(api.pods(), ["web-2"]);

    // A WebSocket exec (a GET) is held as the `create` the API server
    // authorizes it as.
    let exec = kubectl.python_exec("web-2", &["echo", "held"]);
    let pending = stack
        .sluice
        .wait_for_pending("get|create pods/exec web-2 -n default: echo held", WAIT)
        .unwrap();
    let exec_path = "/api/v1/namespaces/default/pods/web-2/exec";
    assert!(
        api.requests_to("GET", exec_path).is_empty(),
        "held, not sent"
    );
    stack
        .sluice
        .approve(pending["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(finished(exec), "held\n");
    assert_eq!(api.requests_to("GET", exec_path).len(), 1);

    let out = kubectl.run(&["delete", "namespace", "prod"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Error from server (Forbidden): denied by policy: delete namespaces"),
        "{stderr}"
    );
    assert!(
        api.requests()
            .iter()
            .all(|r| r.method != "DELETE" || r.path() == pod_path),
        "the API server saw no namespace deletion"
    );
    let denied = stack
        .sluice
        .wait_for_event("the denial", WAIT, |e| e["event"] == "denied")
        .unwrap();
    assert_eq!(denied["rule"], "delete namespaces");
    assert!(kube_requests(&stack).iter().any(|e| e["verb"] == "delete"
        && e["resource"] == "pods"
        && e["name"] == "web-1"
        && e["status"] == 200));

    assert_real_token_only(&stack);
    stack.assert_no_secret_leaked();
}

#[test]
fn requests_read_otherwise_than_the_api_server_would_are_refused() {
    let stack = kube_stack("kube-ambiguous", RULES);
    let token = stack.token(KUBE).unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let server = stack.kube(KUBE).server();
    let curl = |method: &str, target: &str| {
        let url = format!("{server}{target}");
        stack
            .curl(&[
                "--path-as-is",
                "-X",
                method,
                "-H",
                &auth,
                "--resolve",
                &resolve(&stack),
                &url,
            ])
            .unwrap()
    };
    // The deny rule on kube-system's secrets, reached every way.
    for (method, target, status) in [
        ("GET", "/api/v1/namespaces/kube-system/secrets", 403),
        ("GET", "/api/v1/watch/namespaces/kube-system/secrets", 403),
        ("GET", "/api/v1/secrets", 403),
        (
            "GET",
            "/api/v1/namespaces/default/../kube-system/secrets",
            400,
        ),
        ("GET", "/api/v1/namespaces/kube-system%2Fsecrets", 400),
        ("GET", "/api/v1//namespaces/kube-system/secrets", 400),
        ("DELETE", "/api/v1/namespaces/kube%2Dsystem", 403),
        (
            "GET",
            "/api/v1/namespaces/default/pods?watch=1&watch=false",
            400,
        ),
        ("OPTIONS", "/api/v1/namespaces/default/pods", 400),
    ] {
        let res = curl(method, target);
        assert_eq!(res.status, status, "{method} {target}: {}", res.body);
        let body: Value = serde_json::from_str(&res.body).unwrap();
        assert_eq!(body["kind"], "Status", "{}", res.body);
    }
    assert!(
        stack.kube(KUBE).requests().is_empty(),
        "the API server saw none of them"
    );
    // SPDY/3.1 (kubectl before 1.30) is relayed for exec only; h2c never.
    let ca = stack.sluice.ca_cert_path().unwrap().display().to_string();
    let port = stack.kube(KUBE).addr().port().to_string();
    let upgrade = |path: &str, protocol: &str| {
        let args = [KUBE_HOST, &port, &ca, &token, path, protocol];
        let out = stack.python(&[], PYTHON_UPGRADE, &args).unwrap();
        assert_ok(&out)
    };
    let exec = "/api/v1/namespaces/default/pods/web-1/exec?command=ls&stdout=true";
    assert_eq!(
        upgrade(exec, "SPDY/3.1"),
        "HTTP/1.1 101 Switching Protocols\nrelayed\n"
    );
    assert!(upgrade(exec, "h2c").starts_with("HTTP/1.1 400"));
    assert!(upgrade("/api/v1/namespaces/default/pods", "SPDY/3.1").starts_with("HTTP/1.1 400"));
    let execs = stack
        .kube(KUBE)
        .requests_to("GET", "/api/v1/namespaces/default/pods/web-1/exec");
    assert_eq!(execs.len(), 1, "only the SPDY exec reached the API server");
    assert!(stack.kube(KUBE).requests().len() == 1);

    // Non-resource URLs pass.
    assert_eq!(curl("GET", "/version").status, 200);
    stack.assert_no_secret_leaked();
}

/// The Python `kubernetes` client listing the Secrets of `default` with
/// the kubeconfig `argv[1]`: `name data.password` per line.
const PYTHON_LIST_SECRETS: &str = r#"
import sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
for s in client.CoreV1Api().list_namespaced_secret("default").items:
    print(s.metadata.name, s.data["password"])
"#;

#[test]
fn secrets_are_masked_for_kubectl_the_python_client_and_watches() {
    let stack = kube_stack("kube-mask", &format!("{RULES}\nmask = [\"secrets\"]"));
    let token = stack.token(KUBE).unwrap();
    let kubectl = Kubectl::new(&stack, &token);
    let value = stack.kube(KUBE).secret_value().to_string();
    let encoded = base64_of(&value);

    let out = assert_ok(&kubectl.run(&["get", "secret", "db", "-o", "json"]));
    let secret: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(secret["data"]["password"], MASKED_DATA);
    let out = assert_ok(&kubectl.run(&["get", "secrets", "-o", "json"]));
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"][0]["data"]["password"], MASKED_DATA);
    let masked = stack
        .sluice
        .wait_for_event("a masked line", WAIT, |e| e["event"] == "masked")
        .unwrap();
    assert_eq!(masked["fields"], serde_json::json!(["secrets"]));

    // The official Python client's list too.
    let out = stack
        .python(
            &[("HOME", &kubectl.home.display().to_string())],
            PYTHON_LIST_SECRETS,
            &[&kubectl.kubeconfig.display().to_string()],
        )
        .unwrap();
    assert_eq!(assert_ok(&out), format!("db {MASKED_DATA}\n"));

    // A watch of secrets is masked event by event, the stream held open.
    let auth = format!("Authorization: Bearer {token}");
    let url = format!(
        "{}/api/v1/namespaces/default/secrets?watch=true",
        stack.kube(KUBE).server()
    );
    let watch = stack
        .curl(&[
            "-N",
            "--max-time",
            "3",
            "-H",
            &auth,
            "--resolve",
            &resolve(&stack),
            &url,
        ])
        .unwrap();
    assert_eq!(watch.status, 200, "{watch:?}");
    assert!(watch.body.contains(MASKED_DATA), "{}", watch.body);

    // Protobuf alone cannot be masked: 406, the API server not asked.
    let before = stack.kube(KUBE).requests().len();
    let proto = stack
        .curl(&[
            "-H",
            &auth,
            "-H",
            "Accept: application/vnd.kubernetes.protobuf",
            "--resolve",
            &resolve(&stack),
            &format!(
                "{}/api/v1/namespaces/default/secrets/db",
                stack.kube(KUBE).server()
            ),
        ])
        .unwrap();
    assert_eq!(proto.status, 406, "{proto:?}");
    assert_eq!(stack.kube(KUBE).requests().len(), before);

    for text in stack
        .sluice
        .all_output_text()
        .iter()
        .chain([("watch".to_string(), watch.body.clone())].iter())
    {
        assert!(
            !text.1.contains(&encoded) && !text.1.contains(&value),
            "secret data in {}",
            text.0
        );
    }
    stack.assert_no_secret_leaked();
}

#[test]
fn bad_revoked_and_other_service_tokens_get_401() {
    let stack = kube_stack("kube-tokens", RULES);
    let other = stack.token("payments-api").unwrap();
    let revoked = stack.token(KUBE).unwrap();
    stack.sluice.token_revoke(&revoked).unwrap();
    let bad = format!("slt_{}", "A".repeat(40));
    for token in [bad.as_str(), other.as_str(), revoked.as_str()] {
        // One request each (no discovery), under the token-guessing throttle.
        let out =
            Kubectl::new(&stack, token).run(&["get", "--raw", "/api/v1/namespaces/default/pods"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("invalid sluice token"), "{stderr}");
    }
    assert!(
        stack.kube(KUBE).requests().is_empty(),
        "the API server saw nothing"
    );
    let fails = stack.sluice.audit_events().unwrap();
    assert!(events(&fails, "auth_fail").len() >= 3);
    stack.assert_no_secret_leaked();
}

/// `--resolve` for the Kubernetes service (curl).
fn resolve(stack: &Stack) -> String {
    let addr = stack.kube(KUBE).addr();
    format!("{KUBE_HOST}:{}:{}", addr.port(), addr.ip())
}

fn base64_of(value: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(value)
}
