//! Kubernetes with a client certificate (DESIGN.md §6 "Kubernetes API":
//! `credential = { client_cert = "kube-cert", client_key = "kube-key" }`):
//! the API server stand-in requires a client certificate of its CA and
//! refuses any `Authorization`; the agent's kubectl still holds only a
//! Sluice token, which Sluice removes, presenting the vault's certificate
//! in the upstream TLS handshake. The key appears nowhere.
use sluice_tests::{Credential, ServiceSpec, Stack};

use crate::{
    assert_no_token,
    kubernetes::{assert_ok, Kubectl, KUBE, KUBE_HOST},
};

#[test]
fn kubectl_with_a_sluice_token_reaches_an_api_server_that_wants_a_client_certificate() {
    let spec = ServiceSpec::kubernetes(KUBE, KUBE_HOST).credential(Credential::ClientCert);
    let stack = Stack::builder("kube-client-cert")
        .service(spec)
        .start()
        .unwrap();
    let token = stack.token(KUBE).unwrap();
    let kubectl = Kubectl::new(&stack, &token);

    let out = assert_ok(&kubectl.run(&["get", "pods", "-o", "name"]));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["pod/web-1", "pod/web-2"]);
    let out = assert_ok(&kubectl.run(&["exec", "web-1", "--", "echo", "over-mtls"]));
    assert_eq!(out, "over-mtls\n");
    let seen = stack.kube(KUBE).requests();
    assert!(!seen.is_empty());
    for r in &seen {
        assert_no_token(r);
        assert_eq!(r.header("authorization"), None, "{}", r.target);
    }

    // A bad token never reaches the API server.
    let before = seen.len();
    let bad = format!("slt_{}", "B".repeat(40));
    let out = Kubectl::new(&stack, &bad).run(&["get", "--raw", "/api/v1/namespaces/default/pods"]);
    assert!(!out.status.success());
    assert_eq!(stack.kube(KUBE).requests().len(), before);

    // The key: not as a whole, not a line of it.
    stack.assert_no_secret_leaked();
    let texts = stack.sluice.all_output_text();
    for line in stack
        .secret(KUBE)
        .lines()
        .filter(|l| !l.starts_with("-----"))
    {
        for (label, text) in &texts {
            assert!(
                !text.contains(line),
                "a line of the client key appears in {label}"
            );
        }
    }
}
