//! The SSH part of a `[[service]]` (DESIGN.md §6 "SSH"): the upstream user,
//! the host key the real server must present, which channel kinds are
//! allowed, and command rules.
use russh::keys::PublicKey;

use super::service::{key_error, KeyError, RawRule, RawService};
use crate::policy::ssh::{CommandRule, SshAllow, SshPolicy};

/// An SSH service's own settings.
#[derive(Debug, Clone)]
pub struct SshService {
    /// The upstream user name (`credential.user`).
    pub user: String,
    /// `upstream_host_key`: the key the real server must present; any
    /// other ends the login before the credential is offered.
    pub host_keys: Vec<PublicKey>,
    pub allow: SshAllow,
    pub deny: Vec<CommandRule>,
    pub approve: Vec<CommandRule>,
}

impl SshService {
    /// The rules as SSH policy takes them.
    pub fn policy(&self) -> SshPolicy<'_> {
        SshPolicy {
            allow: self.allow,
            deny: &self.deny,
            approve: &self.approve,
        }
    }
}

/// Parses `upstream_host_key` as a known_hosts entry: `ssh-ed25519 AAAA…`,
/// optionally preceded by host names (`git.internal,10.0.0.5 ssh-ed25519
/// AAAA…`) and followed by a comment.
///
/// # Errors
/// Why the text is no OpenSSH public key.
pub fn parse_host_key(text: &str) -> Result<PublicKey, String> {
    let text = text.trim();
    PublicKey::from_openssh(text)
        .or_else(|e| match text.split_once(char::is_whitespace) {
            Some((_hosts, key)) => PublicKey::from_openssh(key.trim()),
            None => Err(e),
        })
        .map_err(|e| format!("not a known_hosts key (\"ssh-ed25519 AAAA…\"): {e}"))
}

impl RawService {
    /// The SSH part of this entry.
    pub(super) fn ssh(&self) -> Result<SshService, KeyError> {
        let user = self.credential.user.clone().ok_or_else(|| {
            key_error(
                "credential.user",
                "ssh services need the upstream user name",
            )
        })?;
        let key_text = self.upstream_host_key.as_deref().ok_or_else(|| {
            key_error(
                "upstream_host_key",
                "ssh services need the real server's host key, as in known_hosts (ssh-keyscan prints it)",
            )
        })?;
        let host_key = parse_host_key(key_text).map_err(|m| key_error("upstream_host_key", m))?;
        let allow = match &self.allow {
            Some(names) => SshAllow::parse(names).map_err(|m| key_error("allow", m))?,
            None => SshAllow::default(),
        };
        if !self.mask.is_empty() {
            return Err(key_error("mask", "does not apply to ssh services"));
        }
        let rules = |field: &str, rules: &[RawRule]| {
            rules
                .iter()
                .map(|r| match r {
                    RawRule::Command { command } => Ok(CommandRule {
                        command: command.clone(),
                    }),
                    _ => Err(key_error(field, "ssh rules are { command = \"glob *\" }")),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(SshService {
            user,
            host_keys: vec![host_key],
            allow,
            deny: rules("deny", &self.deny)?,
            approve: rules("approve", &self.approve)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn host_key_takes_the_known_hosts_forms() {
        let bare = parse_host_key(KEY).unwrap();
        let hosted = parse_host_key(&format!("[git.internal]:2222,10.0.0.5 {KEY}")).unwrap();
        let commented = parse_host_key(&format!("{KEY} root@git")).unwrap();
        assert_eq!(bare.key_data(), hosted.key_data());
        assert_eq!(bare.key_data(), commented.key_data());
        assert!(parse_host_key("ssh-ed25519 nope").is_err());
        assert!(parse_host_key("").is_err());
    }

    fn service(lines: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let text = format!(
            "[[service]]\nname = \"git\"\nprotocol = \"ssh\"\nupstream = \"git.internal:22\"\ncredential = {{ secret = \"deploy-key\", user = \"git\" }}\n{lines}"
        );
        crate::config::Config::parse(std::path::Path::new("t.toml"), &text)
    }

    #[test]
    fn the_design_example_parses_and_the_host_key_is_required() {
        let cfg = service(&format!(
            "upstream_host_key = \"{KEY}\"\nallow = [\"exec\", \"sftp\"]\ndeny = [{{ command = \"rm *\" }}]\napprove = [{{ command = \"git-receive-pack *\" }}]\n"
        ))
        .unwrap();
        let ssh = cfg.services[0].ssh().unwrap();
        assert_eq!(ssh.user, "git");
        assert!(ssh.allow.exec && ssh.allow.sftp && !ssh.allow.shell && !ssh.allow.forward);
        assert_eq!(ssh.deny[0].command, "rm *");
        assert_eq!(ssh.approve[0].command, "git-receive-pack *");

        let missing = service("").unwrap_err();
        assert_eq!(missing.key, "service[0] (git).upstream_host_key");
        let sql_rule = service(&format!(
            "upstream_host_key = \"{KEY}\"\ndeny = [\"DROP\"]\n"
        ))
        .unwrap_err();
        assert_eq!(sql_rule.key, "service[0] (git).deny");
        let bad_allow = service(&format!(
            "upstream_host_key = \"{KEY}\"\nallow = [\"x11\"]\n"
        ))
        .unwrap_err();
        assert_eq!(bad_allow.key, "service[0] (git).allow");
    }
}
