//! SSH policy (DESIGN.md §6 "SSH"): which channel kinds a service allows
//! (`allow`), and `deny`/`approve` globs on exec command lines.
//!
//! A command rule matches the command line exactly as the agent sent it
//! (`git-receive-pack 'repo.git'`), by [`glob::matches`]: `*` is any run of
//! characters, case counts. It does not read the line as a shell would: `ls;
//! rm x` does not match `rm *`. Deny what must never run with a leading `*`
//! (`*rm *`) or allow only `exec` of known programs elsewhere.
use super::{glob, Decision};

/// One `deny`/`approve` entry of an SSH service: `{ command = "rm *" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRule {
    /// A glob on the whole command line.
    pub command: String,
}

impl std::fmt::Display for CommandRule {
    /// The glob as written: how records name the rule.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.command)
    }
}

/// `allow = [...]`: the kinds of channel an SSH service permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SshAllow {
    /// `"exec"`: commands (`ssh host cmd`, git, scp).
    pub exec: bool,
    /// `"shell"`: interactive login shells.
    pub shell: bool,
    /// `"sftp"`: the sftp subsystem.
    pub sftp: bool,
    /// `"forward"`: `direct-tcpip` channels (`ssh -L`, `ssh -W`).
    pub forward: bool,
}

impl Default for SshAllow {
    /// Without `allow`: exec, shell and sftp; forwarding stays off.
    fn default() -> Self {
        SshAllow {
            exec: true,
            shell: true,
            sftp: true,
            forward: false,
        }
    }
}

impl SshAllow {
    /// The names `allow` takes.
    pub const NAMES: [&'static str; 4] = ["exec", "shell", "sftp", "forward"];

    /// Parses `allow = [...]`.
    ///
    /// # Errors
    /// The first entry that is not one of [`SshAllow::NAMES`].
    pub fn parse(names: &[String]) -> Result<Self, String> {
        let mut allow = SshAllow {
            exec: false,
            shell: false,
            sftp: false,
            forward: false,
        };
        for name in names {
            match name.as_str() {
                "exec" => allow.exec = true,
                "shell" => allow.shell = true,
                "sftp" => allow.sftp = true,
                "forward" => allow.forward = true,
                other => {
                    return Err(format!(
                        "{other:?} is not one of {}",
                        Self::NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(allow)
    }
}

/// One SSH channel open or channel request, as policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshOperation<'a> {
    /// A `session` channel (needed by exec, shell and sftp).
    Session,
    /// An `exec` request with its command line.
    Exec { command: &'a str },
    /// A `shell` request.
    Shell,
    /// A `subsystem` request, e.g. `sftp`.
    Subsystem { name: &'a str },
    /// A `direct-tcpip` channel to `host:port`.
    Forward { host: &'a str, port: u32 },
}

/// An SSH service's rules, as [`decide`] takes them.
#[derive(Debug, Clone, Copy)]
pub struct SshPolicy<'a> {
    pub allow: SshAllow,
    pub deny: &'a [CommandRule],
    pub approve: &'a [CommandRule],
}

/// The `rule` of a denial by `allow` (the kind of channel is not listed).
pub const NOT_ALLOWED: &str = "allow";

/// Decides `op`: a channel kind missing from `allow` is denied under rule
/// [`NOT_ALLOWED`]; an exec command line is then matched against `deny`,
/// then `approve` (a hold).
pub fn decide(policy: SshPolicy<'_>, op: SshOperation<'_>) -> Decision {
    let a = policy.allow;
    let (allowed, what) = match op {
        SshOperation::Session => (a.exec || a.shell || a.sftp, "a session channel"),
        SshOperation::Exec { .. } => (a.exec, "exec"),
        SshOperation::Shell => (a.shell, "shell"),
        SshOperation::Subsystem { name } => (a.sftp && name == "sftp", "this subsystem"),
        SshOperation::Forward { .. } => (a.forward, "forwarding"),
    };
    if !allowed {
        return Decision::Deny {
            rule: NOT_ALLOWED.into(),
            reason: format!("{what} is not allowed on this service (see its `allow`)"),
        };
    }
    let SshOperation::Exec { command } = op else {
        return Decision::Allow;
    };
    if let Some(rule) = first_match(policy.deny, command) {
        return Decision::Deny {
            reason: format!("denied by policy: {rule}"),
            rule: rule.to_string(),
        };
    }
    match first_match(policy.approve, command) {
        Some(rule) => Decision::Hold {
            rule: rule.to_string(),
        },
        None => Decision::Allow,
    }
}

fn first_match<'r>(rules: &'r [CommandRule], command: &str) -> Option<&'r CommandRule> {
    rules.iter().find(|r| glob::matches(&r.command, command))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(globs: &[&str]) -> Vec<CommandRule> {
        globs
            .iter()
            .map(|g| CommandRule {
                command: g.to_string(),
            })
            .collect()
    }

    #[test]
    fn commands_are_denied_held_or_allowed_by_glob() {
        let deny = rules(&["rm *"]);
        let approve = rules(&["git-receive-pack *"]);
        let p = SshPolicy {
            allow: SshAllow::default(),
            deny: &deny,
            approve: &approve,
        };
        let exec = |command| decide(p, SshOperation::Exec { command });
        assert_eq!(
            exec("rm -rf /srv"),
            Decision::Deny {
                rule: "rm *".into(),
                reason: "denied by policy: rm *".into()
            }
        );
        assert_eq!(
            exec("git-receive-pack 'repo.git'"),
            Decision::Hold {
                rule: "git-receive-pack *".into()
            }
        );
        assert_eq!(exec("git-upload-pack 'repo.git'"), Decision::Allow);
        assert_eq!(exec("echo rm -rf"), Decision::Allow);
        assert_eq!(
            exec("RM -rf /"),
            Decision::Allow,
            "globs are case-sensitive"
        );
        assert_eq!(decide(p, SshOperation::Shell), Decision::Allow);
        assert_eq!(
            decide(p, SshOperation::Subsystem { name: "sftp" }),
            Decision::Allow
        );
    }

    #[test]
    fn allow_gates_channel_kinds_and_forwarding_is_off_by_default() {
        let p = SshPolicy {
            allow: SshAllow::default(),
            deny: &[],
            approve: &[],
        };
        let forward = SshOperation::Forward {
            host: "db",
            port: 5432,
        };
        assert!(matches!(
            decide(p, forward),
            Decision::Deny { rule, .. } if rule == NOT_ALLOWED
        ));
        assert!(matches!(
            decide(p, SshOperation::Subsystem { name: "other" }),
            Decision::Deny { .. }
        ));

        let only_exec = SshAllow::parse(&["exec".into(), "forward".into()]).unwrap();
        let p = SshPolicy {
            allow: only_exec,
            ..p
        };
        assert_eq!(decide(p, forward), Decision::Allow);
        assert_eq!(decide(p, SshOperation::Session), Decision::Allow);
        assert_eq!(
            decide(p, SshOperation::Exec { command: "id" }),
            Decision::Allow
        );
        assert!(matches!(
            decide(p, SshOperation::Shell),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            decide(p, SshOperation::Subsystem { name: "sftp" }),
            Decision::Deny { .. }
        ));

        let forward_only = SshAllow::parse(&["forward".into()]).unwrap();
        let p = SshPolicy {
            allow: forward_only,
            ..p
        };
        assert!(matches!(
            decide(p, SshOperation::Session),
            Decision::Deny { .. }
        ));
        assert!(SshAllow::parse(&["x11".into()]).is_err());
    }
}
