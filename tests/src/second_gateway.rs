//! A second `sluice run` sharing a [`Stack`]'s Redis and services
//! (DESIGN.md §5 "Scale out"): its own config, listener, bpffs directory,
//! vault (sealed with the same vault key), CA, logs, and its own agent
//! with its own cgroup v2 directory.
//!
//! ```no_run
//! use sluice_tests::{ServiceSpec, Stack};
//! let stack = Stack::builder("two").service(ServiceSpec::https("payments-api", "api.payments.test")).start().unwrap();
//! let second = stack.second_gateway("agent-b").unwrap();
//! // An approval or revocation made through `second`'s CLI reaches `stack.sluice`.
//! second.cli(&["approvals", "list"]).unwrap();
//! ```
use anyhow::{Context, Result};

use crate::{
    sluice::{Sluice, SluiceOptions},
    Stack,
};

/// `[gateway]` keys the harness writes for every gateway itself; all other
/// keys of the first gateway's section are shared with the second.
const PER_GATEWAY_KEYS: &[&str] = &[
    "listen",
    "state_dir",
    "log_dir",
    "redis_url",
    "vault_key",
    "egress",
    "bpf_dir",
];

impl Stack {
    /// Starts a second gateway for `agent` (a name other than the stack's
    /// agent) with the same Redis, the same `[gateway]` settings (approval
    /// timeout, Redis password file, …) and the same services, whose
    /// secrets it puts into its own vault first. Dropping it tears it down.
    pub fn second_gateway(&self, agent: &str) -> Result<Sluice> {
        let first = std::fs::read_to_string(&self.sluice.config_path)
            .context("read the first gateway's config")?;
        let parts = SharedConfig::parse(&first)?;
        let rel = &self
            .sluice
            .agents
            .first()
            .context("the first gateway has an agent")?
            .rel;
        let cgroup_prefix = rel
            .rsplit_once('/')
            .map(|(p, _)| p)
            .unwrap_or("sluice-test")
            .to_string();
        let dir = self.dir().join(format!("gateway-{agent}"));
        std::fs::create_dir_all(&dir)?;
        let mut sluice = Sluice::new(SluiceOptions {
            label: crate::unique_name(&format!("gw2-{agent}")),
            dir,
            redis_url: self.redis.url(),
            agents: vec![agent.to_string()],
            agent_toml: String::new(),
            agent_lines: Vec::new(),
            cgroup_prefix,
            egress: parts.egress,
            gateway_toml: parts.gateway_toml,
            services_toml: parts.services_toml,
        })?;
        // Gateways sharing Redis share the vault key: records in Redis are
        // signed with keys derived from it.
        std::fs::copy(
            self.sluice.dir.join("vault.key"),
            sluice.dir.join("vault.key"),
        )
        .context("share the first gateway's vault key")?;
        for s in &self.services {
            sluice.secret_put(&s.spec.secret_name(), &s.secret)?;
        }
        sluice.start()?;
        Ok(sluice)
    }
}

/// What two gateways of one deployment have in common, taken from the
/// first one's config text (which the harness wrote).
struct SharedConfig {
    egress: String,
    gateway_toml: String,
    services_toml: String,
}

impl SharedConfig {
    fn parse(config: &str) -> Result<SharedConfig> {
        let gateway = config
            .split_once("[gateway]\n")
            .map(|(_, rest)| rest.split("\n\n").next().unwrap_or(""))
            .context("no [gateway] table in the first config")?;
        let mut egress = "deny".to_string();
        let mut gateway_toml = String::new();
        for line in gateway.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if key == "egress" {
                egress = value.trim().trim_matches('"').to_string();
            } else if !PER_GATEWAY_KEYS.contains(&key) {
                gateway_toml.push_str(line);
                gateway_toml.push('\n');
            }
        }
        let services_toml = config
            .find("\n[[service]]")
            .map(|at| config[at..].to_string())
            .unwrap_or_default();
        Ok(SharedConfig {
            egress,
            gateway_toml,
            services_toml,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SharedConfig;

    #[test]
    fn shares_gateway_settings_and_services_but_not_paths() {
        let config = "# x\n[gateway]\nlisten = \"127.0.0.1:1\"\nredis_url = \"redis://r\"\negress = \"allow\"\nbpf_dir = \"/b\"\napproval_timeout = \"2s\"\nredis_password_file = \"/p\"\n\n[[agent]]\nname = \"a\"\ncgroup = \"sluice-test/x-a\"\n\n[[service]]\nname = \"s\"\n";
        let shared = SharedConfig::parse(config).unwrap();
        assert_eq!(shared.egress, "allow");
        assert_eq!(
            shared.gateway_toml,
            "approval_timeout = \"2s\"\nredis_password_file = \"/p\"\n"
        );
        assert_eq!(shared.services_toml, "\n[[service]]\nname = \"s\"\n");
    }
}
