//! Kubernetes API policy (DESIGN.md §6 "Kubernetes API"): a request read as
//! the API server reads it, and `deny`/`approve` rules on what it finds.
//!
//! [`RequestInfo::derive`] follows the API server's own derivation
//! (`k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`), which RBAC
//! authorizes on:
//! - paths below `/api/{version}` (the core group) and
//!   `/apis/{group}/{version}` name resources; everything else (`/version`,
//!   `/api`, `/apis`, `/apis/{group}/{version}`, `/openapi/v3`, `/healthz`)
//!   is a non-resource URL, whose verb is the lower-case method;
//! - `…/watch/…` and `…/proxy/…` after the version are special verbs;
//! - the method gives `create` (POST), `get` (GET, HEAD), `update` (PUT),
//!   `patch` (PATCH), `delete` (DELETE);
//! - `namespaces/{ns}/{resource}/…` scopes a resource to `ns`;
//!   `namespaces/{ns}` and its `status`/`finalize` subresources are the
//!   namespace object itself, with namespace `ns`;
//! - then `resource/name/subresource`;
//! - a `get` without a name is `list`, or `watch` with `?watch=` anything
//!   but `0`/`false`; a `fieldSelector` of `metadata.name=` names the
//!   object; a `delete` without a name is `deletecollection`.
//!
//! Where Sluice could read a request otherwise than the API server, it
//! refuses it ([`KubeError`], HTTP 400) rather than guess.
//!
//! Rules match fail-closed: a request without a namespace (across all
//! namespaces, or cluster-scoped) matches every `namespace` glob, and one
//! without a name (list, watch, create, deletecollection) every `name`
//! glob, since it may reach those objects. A WebSocket `GET` of
//! `pods/exec`, `pods/attach` or `pods/portforward` is also a `create`
//! (what the API server authorizes such upgrades as since 1.30).
use serde::Deserialize;

use super::{glob, Decision};

/// One Kubernetes `deny`/`approve` entry: `{ verb = "delete", resource =
/// "pods", namespace = "prod", name = "web-*" }`. Every key is a glob
/// (`*` any run of characters); an absent key matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeRule {
    /// An API verb: `get`, `list`, `watch`, `create`, `update`, `patch`,
    /// `delete`, `deletecollection`, or a non-resource URL's method.
    pub verb: Option<String>,
    /// `resource` or `resource/subresource` (`pods/exec`), as RBAC names
    /// them: `pods` does not match `pods/log`.
    pub resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl KubeRule {
    /// Checks that the rule names at least one key.
    ///
    /// # Errors
    /// A message for the config error.
    pub fn validate(&self) -> Result<(), String> {
        let keys = [&self.verb, &self.resource, &self.namespace, &self.name];
        if keys.iter().all(|k| k.is_none()) {
            return Err("a kubernetes rule needs verb, resource, namespace or name".into());
        }
        Ok(())
    }

    fn matches(&self, info: &RequestInfo) -> bool {
        let glob = |pattern: &Option<String>, value: Option<&str>| match (pattern, value) {
            (None, _) => true,
            // Fail closed: no namespace or name reaches them all.
            (Some(_), None) => true,
            (Some(p), Some(v)) => glob::matches_ignore_case(p, v),
        };
        let verb_ok = self
            .verb
            .as_ref()
            .is_none_or(|p| info.verbs.iter().any(|v| glob::matches_ignore_case(p, v)));
        match &info.target {
            Target::NonResource { .. } => {
                verb_ok
                    && self.resource.is_none()
                    && self.namespace.is_none()
                    && self.name.is_none()
            }
            Target::Resource(r) => {
                verb_ok
                    && self
                        .resource
                        .as_ref()
                        .is_none_or(|p| glob::matches_ignore_case(p, &r.resource_path()))
                    && glob(&self.namespace, r.namespace.as_deref())
                    && glob(&self.name, r.name.as_deref())
            }
        }
    }
}

impl std::fmt::Display for KubeRule {
    /// `verb resource namespace=… name=…`, `*` for an absent verb or
    /// resource: how records name the rule.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = self.verb.as_deref().unwrap_or("*");
        write!(f, "{verb} {}", self.resource.as_deref().unwrap_or("*"))?;
        if let Some(ns) = &self.namespace {
            write!(f, " namespace={ns}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " name={name}")?;
        }
        Ok(())
    }
}

/// What a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An API resource (`/api/v1/…`, `/apis/{group}/{version}/…`).
    Resource(ResourceInfo),
    /// Any other path (`/version`, `/apis`, `/openapi/v3`, …).
    NonResource { path: String },
}

/// A resource request's parts, as the API server names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// `""` for the core group (`/api`).
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl ResourceInfo {
    /// `resource` or `resource/subresource`.
    pub fn resource_path(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// A request as the API server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The API server's verb first, then any other verb the request is
    /// authorized as (`create` for a streaming upgrade).
    pub verbs: Vec<String>,
    pub target: Target,
}

/// Why a request cannot be read one way only (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeError {
    #[error("{0} with no resource after it")]
    BareSpecialVerb(&'static str),
    #[error("method {0} has no API verb")]
    UnknownMethod(String),
    #[error("query parameter {0:?} given more than once")]
    RepeatedParameter(&'static str),
    #[error("a fieldSelector with escapes")]
    EscapedFieldSelector,
}

/// Subresources of a namespace that are the namespace object itself.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];
/// Subresources a WebSocket or SPDY upgrade streams.
const STREAMING_SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

impl RequestInfo {
    /// Reads a request: `method`, its percent-decoded `path` (no query),
    /// its raw `query`, and whether it asks for a protocol upgrade.
    ///
    /// # Errors
    /// [`KubeError`] where the reading is ambiguous or malformed.
    pub fn derive(
        method: &str,
        path: &str,
        query: Option<&str>,
        upgrade: bool,
    ) -> Result<Self, KubeError> {
        let non_resource = || RequestInfo {
            verbs: vec![method.to_ascii_lowercase()],
            target: Target::NonResource {
                path: path.to_string(),
            },
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
            return Ok(non_resource());
        }
        let mut rest = &parts[1..];
        let mut group = String::new();
        if parts[0] == "apis" {
            if rest.len() < 3 {
                return Ok(non_resource());
            }
            group = rest[0].to_string();
            rest = &rest[1..];
        }
        let version = rest[0].to_string();
        rest = &rest[1..];
        let mut verb = match rest[0] {
            "watch" | "proxy" => {
                let special = if rest[0] == "watch" { "watch" } else { "proxy" };
                if rest.len() < 2 {
                    return Err(KubeError::BareSpecialVerb(special));
                }
                rest = &rest[1..];
                special
            }
            _ => match method {
                "POST" => "create",
                "GET" | "HEAD" => "get",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" => "delete",
                other => return Err(KubeError::UnknownMethod(other.to_string())),
            },
        };
        let mut namespace = None;
        if rest[0] == "namespaces" && rest.len() > 1 {
            namespace = Some(rest[1].to_string());
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
        let resource = rest[0].to_string();
        let mut name = rest.get(1).map(|n| n.to_string());
        let subresource = rest
            .get(2)
            .filter(|_| verb != "proxy")
            .map(|s| s.to_string());
        let params = Params::parse(query.unwrap_or(""));
        if name.is_none() && verb == "get" {
            verb = if params.watch()? { "watch" } else { "list" };
            name = params.selected_name()?;
        }
        if name.is_none() && verb == "delete" {
            verb = "deletecollection";
        }
        let mut verbs = vec![verb.to_string()];
        let streaming = subresource
            .as_deref()
            .is_some_and(|s| STREAMING_SUBRESOURCES.contains(&s));
        if upgrade && streaming && verb == "get" {
            verbs.push("create".into());
        }
        Ok(RequestInfo {
            verbs,
            target: Target::Resource(ResourceInfo {
                group,
                version,
                resource,
                subresource,
                namespace,
                name,
            }),
        })
    }

    /// The API server's verb.
    pub fn verb(&self) -> &str {
        &self.verbs[0]
    }

    /// The resource part, for a resource request.
    pub fn resource(&self) -> Option<&ResourceInfo> {
        match &self.target {
            Target::Resource(r) => Some(r),
            Target::NonResource { .. } => None,
        }
    }

    /// `verbs resource[/sub] [name] [-n namespace]` (verbs joined by `|`),
    /// or `verb path` for a non-resource URL: the summary approvals show.
    pub fn summary(&self) -> String {
        let verbs = self.verbs.join("|");
        match &self.target {
            Target::NonResource { path } => format!("{verbs} {path}"),
            Target::Resource(r) => {
                let mut s = format!("{verbs} {}", r.resource_path());
                if let Some(name) = &r.name {
                    s.push(' ');
                    s.push_str(name);
                }
                if let Some(ns) = &r.namespace {
                    s.push_str(" -n ");
                    s.push_str(ns);
                }
                s
            }
        }
    }
}

/// The list options the verb depends on, percent-decoded.
struct Params {
    watch: Vec<String>,
    field_selector: Vec<String>,
}

impl Params {
    fn parse(query: &str) -> Self {
        let mut params = Params {
            watch: Vec::new(),
            field_selector: Vec::new(),
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "watch" => params.watch.push(value.into_owned()),
                "fieldSelector" => params.field_selector.push(value.into_owned()),
                _ => {}
            }
        }
        params
    }

    /// `?watch=` as the API server converts it: anything but `0` and
    /// `false` (any case) is true.
    fn watch(&self) -> Result<bool, KubeError> {
        let truth = |v: &String| !(v == "0" || v.eq_ignore_ascii_case("false"));
        match self.watch.as_slice() {
            [] => Ok(false),
            [first, others @ ..] if others.iter().all(|o| truth(o) == truth(first)) => {
                Ok(truth(first))
            }
            _ => Err(KubeError::RepeatedParameter("watch")),
        }
    }

    /// The name a `fieldSelector` requires exactly (`metadata.name=x` or
    /// `metadata.name==x` among its comma-separated terms).
    fn selected_name(&self) -> Result<Option<String>, KubeError> {
        let selector = match self.field_selector.as_slice() {
            [] => return Ok(None),
            [one] => one,
            _ => return Err(KubeError::RepeatedParameter("fieldSelector")),
        };
        if selector.contains('\\') {
            return Err(KubeError::EscapedFieldSelector);
        }
        let name = selector.split(',').find_map(|term| {
            let (field, value) = term.split_once("==").or_else(|| {
                term.split_once('=')
                    .filter(|(field, _)| !field.ends_with('!'))
            })?;
            (field.trim() == "metadata.name").then(|| value.trim().to_string())
        });
        Ok(name.filter(|n| !n.is_empty() && !n.contains('/') && n != "." && n != ".."))
    }
}

/// Decides a Kubernetes request against a service's `deny` then `approve`
/// rules.
pub fn decide(deny: &[KubeRule], approve: &[KubeRule], info: &RequestInfo) -> Decision {
    if let Some(rule) = deny.iter().find(|r| r.matches(info)) {
        return Decision::Deny {
            reason: format!("denied by policy: {rule}"),
            rule: rule.to_string(),
        };
    }
    match approve.iter().find(|r| r.matches(info)) {
        Some(rule) => Decision::Hold {
            rule: rule.to_string(),
        },
        None => Decision::Allow,
    }
}

#[cfg(test)]
#[path = "kube_tests.rs"]
mod tests;
