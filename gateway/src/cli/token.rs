//! `sluice token issue | list | revoke` (DESIGN.md §4 "CLI", "Tokens").
//! `issue` prints the token alone on stdout; nothing else ever prints a
//! token or its digest.
use std::{sync::Arc, time::Duration};

use clap::Subcommand;

use super::{sessions::print_line, CliError};
use crate::{
    config::Config,
    state::{JwtRevocation, State, StateError, StateKeys},
    tokens::{TokenRecord, TOKEN_PREFIX},
};

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Issue a token for one agent and one service; prints the token alone
    Issue {
        /// Agent name (a [[agent]] in the config)
        #[arg(long)]
        agent: String,
        /// Service name (a [[service]] in the config)
        #[arg(long)]
        service: String,
        /// Lifetime, e.g. 30m, 1h, 7d
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// For an ssh service: print a fresh OpenSSH private key (a
        /// placeholder key) instead of a token; only its public key is kept
        #[arg(long)]
        ssh_key: bool,
    },
    /// List known tokens: id, agent, service, expiry, state (never the token)
    List,
    /// Revoke a token, given as the token itself or its id (tok_…), or
    /// OIDC JWTs by subject or jti (DESIGN.md §7)
    Revoke {
        /// The token (slt_…) or its id (tok_…)
        #[arg(required_unless_present_any = ["subject", "jti"], conflicts_with_all = ["subject", "jti"])]
        token_or_id: Option<String>,
        /// Refuse every JWT with this `sub` issued until now, on every gateway
        #[arg(long, conflicts_with = "jti")]
        subject: Option<String>,
        /// Refuse the JWT with this `jti`, on every gateway
        #[arg(long)]
        jti: Option<String>,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| format!("{e}; use e.g. 30m, 1h or 7d"))?;
    if ttl < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(ttl)
}

impl From<StateError> for CliError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::InvalidUrl(_) => CliError::Usage(e.to_string()),
            e => CliError::Runtime(e.to_string()),
        }
    }
}

/// Runs a `sluice token` subcommand against `cfg`'s Redis.
///
/// # Errors
/// [`CliError::Usage`] naming `--agent` or `--service` when the config has
/// no such entry, or `gateway.redis_url` when it is malformed;
/// [`CliError::Runtime`] when Redis is unreachable or the token is unknown.
pub async fn run(cfg: &Config, cmd: TokenCmd, json: bool) -> Result<(), CliError> {
    match cmd {
        TokenCmd::Issue {
            agent,
            service,
            ttl,
            ssh_key,
        } => {
            if cfg.agent(&agent).is_none() {
                return Err(CliError::Usage(format!(
                    "--agent {agent}: no [[agent]] with that name in {}",
                    cfg.path.display()
                )));
            }
            let Some(configured) = cfg.service(&service) else {
                return Err(CliError::Usage(format!(
                    "--service {service}: no [[service]] with that name in {}",
                    cfg.path.display()
                )));
            };
            if ssh_key && configured.ssh().is_none() {
                return Err(CliError::Usage(format!(
                    "--ssh-key: service {service} is not an ssh service"
                )));
            }
            let state = open(cfg).await?;
            let (token, record) = state.issue(&agent, &service, ttl).await?;
            if ssh_key {
                // The token is never shown: the key stands for it.
                let key = sluice_ssh::placeholder::PlaceholderKey::generate(&format!(
                    "{agent}@{service}"
                ))
                .map_err(CliError::runtime)?;
                crate::proxy::ssh::keys::enrol(&state, &record, &token, &key.public).await?;
                return print_line(key.private_pem.trim_end());
            }
            crate::proxy::enrol_token(&state, configured, &token, &record).await?;
            print_line(&token)
        }
        TokenCmd::List => {
            let state = open(cfg).await?;
            let records = state.list().await?;
            let now = chrono::Utc::now().timestamp();
            if json {
                for r in &records {
                    print_line(&json_line(r, now))?;
                }
                Ok(())
            } else {
                print_table(&records, now)
            }
        }
        TokenCmd::Revoke {
            token_or_id,
            subject,
            jti,
        } => {
            let state = open(cfg).await?;
            let jwt = match (subject, jti) {
                (Some(s), _) => Some(JwtRevocation::Subject(s)),
                (None, Some(j)) => Some(JwtRevocation::Jti(j)),
                (None, None) => None,
            };
            if let Some(what) = jwt {
                return Ok(state.revoke_jwt(&what).await?);
            }
            let token_or_id = token_or_id.unwrap_or_default();
            let given_token = token_or_id.starts_with(TOKEN_PREFIX);
            match (state.revoke(&token_or_id).await?, given_token) {
                (true, _) => Ok(()),
                // Never echo a token back.
                (false, true) => Err(CliError::Runtime(
                    "no such token (unknown, or expired over a day ago); see `sluice token list`"
                        .into(),
                )),
                (false, false) => Err(CliError::Runtime(format!(
                    "no token with id {token_or_id:?}; see `sluice token list`"
                ))),
            }
        }
    }
}

/// The Redis of `cfg` with the MAC keys derived from the vault key.
async fn open(cfg: &Config) -> Result<State, StateError> {
    let keys = StateKeys::load(&cfg.gateway)?;
    Ok(State::open(&cfg.gateway).await?.with_keys(Arc::new(keys)))
}

/// Unix seconds as `2026-11-29T08:50:00Z`.
fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(
        || unix.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

fn json_line(r: &TokenRecord, now: i64) -> String {
    serde_json::json!({
        "id": r.id,
        "agent": r.agent,
        "service": r.service,
        "created": rfc3339(r.created),
        "expires": rfc3339(r.expires),
        "state": r.state(now).as_str(),
    })
    .to_string()
}

fn print_table(records: &[TokenRecord], now: i64) -> Result<(), CliError> {
    let rows: Vec<[String; 5]> = records
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.agent.clone(),
                r.service.clone(),
                rfc3339(r.expires),
                r.state(now).as_str().to_string(),
            ]
        })
        .collect();
    for line in super::sessions::table(["ID", "AGENT", "SERVICE", "EXPIRES", "STATE"], &rows) {
        print_line(&line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_humantime_and_refuses_zero() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn json_line_has_the_listed_fields_and_no_secret_material() {
        let r = TokenRecord {
            id: "tok_abc".into(),
            agent: "a".into(),
            service: "s".into(),
            created: 0,
            expires: 3600,
            revoked: false,
        };
        let v: serde_json::Value = serde_json::from_str(&json_line(&r, 10)).unwrap();
        assert_eq!(v["expires"], "1970-01-01T01:00:00Z");
        assert_eq!(v["state"], "active");
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["agent", "created", "expires", "id", "service", "state"]
        );
    }
}
