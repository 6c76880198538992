//! The tokens page: every known token (id, agent, service, expiry, state;
//! never a token or its digest), with revoke for admins. Revocation goes
//! through the same Redis state as `sluice token revoke`, so it takes
//! effect on every gateway at the agent's next request or statement.
use hyper::{Response, StatusCode};

use super::{
    actions::Target,
    html::{self, escape, Body},
    roles::Roles,
    session::WebSession,
    Console,
};
use crate::tokens::TokenState;

/// `GET /tokens`.
pub async fn page(console: &Console, web: &WebSession) -> Response<Body> {
    let listed = match console.state.get().await {
        Ok(state) => state.list().await,
        Err(e) => Err(e),
    };
    let records = match listed {
        Ok(r) => r,
        Err(e) => return html::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let may_revoke = Roles::new(&console.cfg, &web.person).may_revoke();
    let now = chrono::Utc::now().timestamp();
    let rows: String = records
        .iter()
        .map(|r| {
            let state = r.state(now);
            let action = if may_revoke && state == TokenState::Active {
                format!(
                    "<form method=\"post\" action=\"/tokens/{}/revoke\">{}\
                     <button type=\"submit\" class=\"deny\">Revoke</button></form>",
                    escape(&r.id),
                    html::csrf_field(web)
                )
            } else {
                String::new()
            };
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
                escape(&r.id),
                escape(&r.agent),
                escape(&r.service),
                html::time(r.expires),
                state.as_str(),
            )
        })
        .collect();
    let body = format!(
        "<table class=\"tokens\"><thead><tr><th>Token</th><th>Agent</th><th>Service</th>\
         <th>Expires</th><th>State</th><th></th></tr></thead><tbody>{}</tbody></table>",
        if rows.is_empty() {
            "<tr><td colspan=\"6\" class=\"muted\">No tokens.</td></tr>".to_string()
        } else {
            rows
        }
    );
    html::page("Tokens", web, &body)
}

/// `POST /tokens/{id}/revoke`, the CSRF token already checked: 403 for
/// anyone but admins.
pub async fn revoke(console: &Console, web: &WebSession, id: &str) -> Response<Body> {
    let record = |outcome: &str| {
        console
            .actions
            .record(&web.person, "revoke", Target::Token(id), None, outcome)
    };
    if !Roles::new(&console.cfg, &web.person).may_revoke() {
        record("forbidden");
        return html::error(
            StatusCode::FORBIDDEN,
            "Only console admins may revoke tokens.",
        );
    }
    if !id.starts_with("tok_") {
        record("unknown");
        return html::error(StatusCode::NOT_FOUND, "That is no token id.");
    }
    let revoked = match console.state.get().await {
        Ok(state) => state.revoke(id).await,
        Err(e) => Err(e),
    };
    match revoked {
        Ok(true) => {
            record("done");
            html::redirect("/tokens")
        }
        Ok(false) => {
            record("unknown");
            html::error(StatusCode::NOT_FOUND, &format!("No token {id}."))
        }
        Err(e) => {
            record(&e.to_string());
            html::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}
