//! One test per rule of the API server's request-info derivation, then the
//! rule decisions.
use super::*;

fn info(method: &str, path: &str, query: Option<&str>) -> RequestInfo {
    RequestInfo::derive(method, path, query, false).unwrap()
}

fn resource(method: &str, path: &str, query: Option<&str>) -> (String, ResourceInfo) {
    let i = info(method, path, query);
    let verb = i.verb().to_string();
    (verb, i.resource().cloned().expect("a resource request"))
}

fn ri(
    group: &str,
    resource: &str,
    sub: Option<&str>,
    ns: Option<&str>,
    name: Option<&str>,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: "v1".into(),
        resource: resource.into(),
        subresource: sub.map(Into::into),
        namespace: ns.map(Into::into),
        name: name.map(Into::into),
    }
}

#[test]
fn non_resource_urls_keep_the_lower_case_method() {
    for path in [
        "/version",
        "/api",
        "/apis",
        "/apis/apps/v1",
        "/api/v1",
        "/openapi/v3",
        "/",
        "/healthz/etcd",
    ] {
        let i = info("GET", path, None);
        assert_eq!(i.verb(), "get", "{path}");
        assert_eq!(
            i.target,
            Target::NonResource { path: path.into() },
            "{path}"
        );
    }
    assert_eq!(info("POST", "/logs/x", None).verb(), "post");
}

#[test]
fn core_and_named_groups() {
    assert_eq!(
        resource("GET", "/api/v1/pods", None),
        ("list".into(), ri("", "pods", None, None, None))
    );
    let (verb, r) = resource("GET", "/apis/apps/v1/namespaces/prod/deployments/web", None);
    assert_eq!(verb, "get");
    assert_eq!(
        r,
        ri("apps", "deployments", None, Some("prod"), Some("web"))
    );
}

#[test]
fn methods_give_verbs() {
    let path = "/api/v1/namespaces/prod/pods/web-1";
    for (method, verb) in [
        ("GET", "get"),
        ("HEAD", "get"),
        ("PUT", "update"),
        ("PATCH", "patch"),
        ("DELETE", "delete"),
    ] {
        assert_eq!(info(method, path, None).verb(), verb);
    }
    assert_eq!(
        info("POST", "/api/v1/namespaces/prod/pods", None).verb(),
        "create"
    );
    assert_eq!(
        RequestInfo::derive("OPTIONS", path, None, false),
        Err(KubeError::UnknownMethod("OPTIONS".into()))
    );
}

#[test]
fn get_without_name_is_list_or_watch() {
    let path = "/api/v1/namespaces/prod/pods";
    assert_eq!(info("GET", path, None).verb(), "list");
    for q in [
        "watch=true",
        "watch=1",
        "watch=",
        "watch=yes",
        "limit=5&watch=True",
    ] {
        assert_eq!(info("GET", path, Some(q)).verb(), "watch", "{q}");
    }
    for q in ["watch=false", "watch=0", "watch=FALSE"] {
        assert_eq!(info("GET", path, Some(q)).verb(), "list", "{q}");
    }
    assert_eq!(
        RequestInfo::derive("GET", path, Some("watch=true&watch=false"), false),
        Err(KubeError::RepeatedParameter("watch"))
    );
    // ?watch on a named get changes nothing (the API server ignores it).
    assert_eq!(
        info("GET", "/api/v1/namespaces/prod/pods/a", Some("watch=1")).verb(),
        "get"
    );
}

#[test]
fn watch_special_verb_and_field_selector_names() {
    let (verb, r) = resource("GET", "/api/v1/watch/namespaces/prod/pods/web-1", None);
    assert_eq!(verb, "watch");
    assert_eq!(r, ri("", "pods", None, Some("prod"), Some("web-1")));
    assert_eq!(
        RequestInfo::derive("GET", "/api/v1/watch", None, false),
        Err(KubeError::BareSpecialVerb("watch"))
    );
    let (verb, r) = resource(
        "GET",
        "/api/v1/namespaces/prod/pods",
        Some("fieldSelector=metadata.name%3Dweb-1&watch=true"),
    );
    assert_eq!((verb.as_str(), r.name.as_deref()), ("watch", Some("web-1")));
    let (_, r) = resource(
        "GET",
        "/api/v1/pods",
        Some("fieldSelector=status.phase=Running,metadata.name==db"),
    );
    assert_eq!(r.name.as_deref(), Some("db"));
    let (_, r) = resource(
        "GET",
        "/api/v1/pods",
        Some("fieldSelector=metadata.name!=db"),
    );
    assert_eq!(r.name, None);
    assert_eq!(
        RequestInfo::derive(
            "GET",
            "/api/v1/pods",
            Some("fieldSelector=metadata.name%3Da%5C%2Cb"),
            false
        ),
        Err(KubeError::EscapedFieldSelector)
    );
}

#[test]
fn proxy_takes_no_subresource() {
    let (verb, r) = resource(
        "GET",
        "/api/v1/proxy/namespaces/prod/services/web/healthz",
        None,
    );
    assert_eq!(verb, "proxy");
    assert_eq!(r, ri("", "services", None, Some("prod"), Some("web")));
}

#[test]
fn namespaces_and_their_subresources() {
    let (verb, r) = resource("DELETE", "/api/v1/namespaces/kube-system", None);
    assert_eq!(verb, "delete");
    assert_eq!(
        r,
        ri(
            "",
            "namespaces",
            None,
            Some("kube-system"),
            Some("kube-system")
        )
    );
    let (_, r) = resource("PUT", "/api/v1/namespaces/prod/finalize", None);
    assert_eq!(
        r,
        ri(
            "",
            "namespaces",
            Some("finalize"),
            Some("prod"),
            Some("prod")
        )
    );
    let (verb, r) = resource("GET", "/api/v1/namespaces", None);
    assert_eq!(
        (verb.as_str(), r),
        ("list", ri("", "namespaces", None, None, None))
    );
}

#[test]
fn subresources_and_deletecollection() {
    let (verb, r) = resource(
        "GET",
        "/api/v1/namespaces/prod/pods/web-1/log",
        Some("follow=true"),
    );
    assert_eq!(verb, "get");
    assert_eq!(r.resource_path(), "pods/log");
    assert_eq!(
        info("DELETE", "/api/v1/namespaces/prod/pods", None).verb(),
        "deletecollection"
    );
}

#[test]
fn a_streaming_upgrade_is_also_a_create() {
    let path = "/api/v1/namespaces/prod/pods/web-1/exec";
    let i = RequestInfo::derive("GET", path, Some("command=echo&command=hello"), true).unwrap();
    assert_eq!(i.verbs, ["get", "create"]);
    assert_eq!(info("POST", path, None).verbs, ["create"]);
    assert_eq!(i.summary(), "get|create pods/exec web-1 -n prod");
}

fn rule(verb: &str, resource: &str, namespace: Option<&str>, name: Option<&str>) -> KubeRule {
    KubeRule {
        verb: Some(verb.into()),
        resource: Some(resource.into()),
        namespace: namespace.map(Into::into),
        name: name.map(Into::into),
    }
}

#[test]
fn deny_then_approve_with_globs() {
    let deny = [
        rule("delete", "namespaces", None, None),
        rule("*", "secrets", Some("kube-system"), None),
    ];
    let approve = [
        rule("create", "pods/exec", None, None),
        rule("delete", "pods", Some("prod"), None),
    ];
    let judge = |method, path, query, upgrade| {
        decide(
            &deny,
            &approve,
            &RequestInfo::derive(method, path, query, upgrade).unwrap(),
        )
    };
    assert_eq!(
        judge("DELETE", "/api/v1/namespaces/prod", None, false),
        Decision::Deny {
            rule: "delete namespaces".into(),
            reason: "denied by policy: delete namespaces".into()
        }
    );
    assert!(matches!(
        judge(
            "GET",
            "/api/v1/namespaces/kube-system/secrets/x",
            None,
            false
        ),
        Decision::Deny { .. }
    ));
    // Across all namespaces reaches kube-system too.
    assert!(matches!(
        judge("GET", "/api/v1/secrets", None, false),
        Decision::Deny { .. }
    ));
    assert_eq!(
        judge("GET", "/api/v1/namespaces/prod/secrets", None, false),
        Decision::Allow
    );
    assert!(matches!(
        judge("GET", "/api/v1/namespaces/dev/pods/a/exec", None, true),
        Decision::Hold { .. }
    ));
    assert!(matches!(
        judge("DELETE", "/api/v1/namespaces/prod/pods/a", None, false),
        Decision::Hold { .. }
    ));
    assert_eq!(
        judge("DELETE", "/api/v1/namespaces/dev/pods/a", None, false),
        Decision::Allow
    );
    // `pods` does not cover its subresources.
    assert_eq!(
        judge("GET", "/api/v1/namespaces/prod/pods/a/log", None, false),
        Decision::Allow
    );
    // Non-resource URLs match only verb-only rules.
    assert_eq!(judge("GET", "/version", None, false), Decision::Allow);
    let verb_only = [KubeRule {
        verb: Some("post".into()),
        resource: None,
        namespace: None,
        name: None,
    }];
    assert!(matches!(
        decide(&verb_only, &[], &info("POST", "/logs", None)),
        Decision::Deny { .. }
    ));
}

#[test]
fn names_match_globs_and_nameless_requests_match_every_name() {
    let deny = [rule("*", "secrets", None, Some("db-*"))];
    let judge = |method, path| decide(&deny, &[], &info(method, path, None));
    assert!(matches!(
        judge("GET", "/api/v1/namespaces/a/secrets/db-pass"),
        Decision::Deny { .. }
    ));
    assert_eq!(
        judge("GET", "/api/v1/namespaces/a/secrets/web"),
        Decision::Allow
    );
    assert!(matches!(
        judge("GET", "/api/v1/namespaces/a/secrets"),
        Decision::Deny { .. }
    ));
    assert!(KubeRule {
        verb: None,
        resource: None,
        namespace: None,
        name: None
    }
    .validate()
    .is_err());
}
