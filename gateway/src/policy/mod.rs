//! Policy decisions on typed operations. Protocol handlers turn bytes into
//! an [`Operation`]; this module decides it under a service's rules and
//! knows no wire format. There is one [`Decision`] type for all protocols.
use crate::config::{Service, ServiceKind};

pub mod glob;
pub mod http;
pub mod kube;
pub mod ssh;
pub mod statement;

/// One operation of any protocol, as policy sees it.
#[derive(Debug, Clone, Copy)]
pub enum Operation<'a> {
    /// An HTTP request.
    Http(http::HttpOperation<'a>),
    /// A SQL text: what the dialect's parser found, or its error message.
    Sql(Result<statement::SqlFacts<'a>, &'a str>),
    /// A Kubernetes API request, read as the API server reads it.
    Kube(&'a kube::RequestInfo),
    /// An SSH channel open or channel request.
    Ssh(ssh::SshOperation<'a>),
}

/// What to do with an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Go ahead; what comes back passes the service's `mask` first.
    Mask,
    /// Refused by the rule shown (as written, e.g. `DELETE /v1/customers/*`
    /// or `DROP`); `reason` is one sentence for the agent and the record.
    Deny { rule: String, reason: String },
    /// Held until a human approves it (JIT approval), under `rule`.
    Hold { rule: String },
}

/// The `rule` of a denial for an operation of another protocol than the
/// service's (a handler bug, refused rather than let through).
pub const WRONG_PROTOCOL: &str = "WRONG_PROTOCOL";

/// Decides `op` under `service`'s rules; an allowed operation on a service
/// with masked fields is [`Decision::Mask`].
pub fn decide(service: &Service, op: Operation<'_>) -> Decision {
    let decision = match (&service.kind, op) {
        (ServiceKind::Http(h), Operation::Http(op)) => http::decide(&h.deny, &h.approve, op),
        (ServiceKind::Postgres(s) | ServiceKind::Mysql(s), Operation::Sql(facts)) => {
            statement::decide(s.policy(&service.mask), facts)
        }
        (ServiceKind::Kubernetes(k), Operation::Kube(info)) => {
            kube::decide(&k.deny, &k.approve, info)
        }
        (ServiceKind::Ssh(s), Operation::Ssh(op)) => ssh::decide(s.policy(), op),
        _ => Decision::Deny {
            rule: WRONG_PROTOCOL.into(),
            reason: format!(
                "this operation is not one of service {}'s protocol",
                service.name
            ),
        },
    };
    masked(service, decision)
}

/// `decision`, with [`Decision::Allow`] turned into [`Decision::Mask`] on a
/// service with masked fields.
pub fn masked(service: &Service, decision: Decision) -> Decision {
    match decision {
        Decision::Allow if !service.mask.is_empty() => Decision::Mask,
        other => other,
    }
}
