//! `sluice doctor`: checks what Sluice needs from the host and says how to
//! fix each problem. Exits 1 when any check fails.
use std::{os::unix::fs::PermissionsExt, path::Path};

use super::CliError;
use crate::{
    config::{oidc::Issuer, Agent, Config},
    identity,
    intercept::{cgroup, procs, programs},
    state::State,
};

struct Check {
    name: &'static str,
    result: Result<String, String>,
}

/// Runs every check against the config at `path` and prints one line each.
///
/// # Errors
/// [`CliError::Runtime`] naming how many checks failed.
pub fn run(path: &Path) -> Result<(), CliError> {
    let mut checks = vec![
        Check {
            name: "root",
            result: root(),
        },
        Check {
            name: "kernel",
            result: kernel(),
        },
        Check {
            name: "BTF",
            result: btf(),
        },
        Check {
            name: "cgroup2",
            result: cgroup2(),
        },
        Check {
            name: "bpffs",
            result: bpffs(),
        },
    ];
    let mut warnings = Vec::new();
    match Config::load(path) {
        Err(e) => checks.push(Check {
            name: "config",
            result: Err(format!("{e}")),
        }),
        Ok(cfg) => {
            checks.push(Check {
                name: "config",
                result: Ok(format!("{} loads", path.display())),
            });
            checks.push(Check {
                name: "vault key",
                result: vault_key(&cfg),
            });
            checks.push(Check {
                name: "redis",
                result: redis(&cfg),
            });
            checks.push(Check {
                name: "redis auth",
                result: redis_auth(&cfg),
            });
            checks.push(Check {
                name: "attached",
                result: attached(&cfg),
            });
            if !cfg.redirect_addrs().is_empty() {
                checks.push(Check {
                    name: "containers",
                    result: netns_cookie(),
                });
            }
            for issuer in &cfg.oidc {
                checks.push(Check {
                    name: "oidc",
                    result: oidc_issuer(issuer),
                });
            }
            for agent in &cfg.agents {
                match own_uid(agent) {
                    Ok(msg) => checks.push(Check {
                        name: "agent uid",
                        result: Ok(msg),
                    }),
                    Err(msg) => warnings.push(msg),
                }
            }
        }
    }
    let mut failed = 0;
    for c in &checks {
        match &c.result {
            Ok(msg) => println!("ok    {:<10} {msg}", c.name),
            Err(msg) => {
                failed += 1;
                println!("FAIL  {:<10} {msg}", c.name);
            }
        }
    }
    for w in &warnings {
        println!("WARN  {:<10} {w}", "agent uid");
    }
    if failed == 0 {
        println!("all checks passed");
        Ok(())
    } else {
        Err(CliError::Runtime(format!(
            "{failed} check(s) failed; see the lines marked FAIL"
        )))
    }
}

fn root() -> Result<String, String> {
    if nix::unistd::geteuid().is_root() {
        Ok("running as root".into())
    } else {
        Err("not root: `sluice run` needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run doctor with sudo".into())
    }
}

fn kernel() -> Result<String, String> {
    let uts = nix::sys::utsname::uname().map_err(|e| e.to_string())?;
    let release = uts.release().to_string_lossy().into_owned();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if (major, minor) >= (5, 8) {
        Ok(format!(
            "Linux {release} has cgroup connect/sendmsg/getpeername hooks and bpf_link"
        ))
    } else {
        Err(format!("Linux {release} is too old: Sluice needs ≥ 5.8 (getpeername hooks, cgroup bpf_link); upgrade the kernel"))
    }
}

fn btf() -> Result<String, String> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok("/sys/kernel/btf/vmlinux present".into())
    } else {
        Err("no /sys/kernel/btf/vmlinux: use a kernel built with CONFIG_DEBUG_INFO_BTF=y".into())
    }
}

/// Agents with `redirect` need the network namespace cookie (kernel ≥ 5.14,
/// `SO_NETNS_COOKIE`) to tell their containers' connections from the host's.
fn netns_cookie() -> Result<String, String> {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    crate::intercept::netns::cookie_of(&probe)
        .map(|c| format!("network namespace cookie {c}: agents' redirect addresses can serve containers"))
        .map_err(|e| format!("this kernel gives no network namespace cookie ({e}); agents with `redirect` need Linux 5.14 or later: upgrade the kernel or remove `redirect`"))
}

fn cgroup2() -> Result<String, String> {
    cgroup::cgroup2_mount()
        .map(|m| format!("mounted at {}", m.display()))
        .map_err(|_| "no cgroup2 mount: `mount -t cgroup2 none /sys/fs/cgroup` (or boot with systemd.unified_cgroup_hierarchy=1)".into())
}

fn bpffs() -> Result<String, String> {
    if programs::is_bpffs(Path::new("/sys/fs/bpf")) {
        Ok("mounted at /sys/fs/bpf".into())
    } else {
        Err("bpffs is not mounted: `mount -t bpf bpf /sys/fs/bpf`".into())
    }
}

fn vault_key(cfg: &Config) -> Result<String, String> {
    let path = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| Path::new(&d).join("vault.key"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| cfg.gateway.vault_key.clone());
    let meta = std::fs::metadata(&path).map_err(|e| {
        format!(
            "{}: {e}; it is created by `sluice secret put` or the installer",
            path.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} has mode {mode:o}; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    if meta.len() != 32 {
        return Err(format!(
            "{} is {} bytes; a vault key is exactly 32 random bytes",
            path.display(),
            meta.len()
        ));
    }
    Ok(format!("{} is 32 bytes, mode 600", path.display()))
}

/// Whether `issuer`'s discovery document and JWKS can be fetched and
/// hold at least one key Sluice accepts.
fn oidc_issuer(issuer: &Issuer) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let name = &issuer.name;
    let fix =
        "check oidc.issuer, and oidc.ca / oidc.resolve if the issuer uses a private CA or address";
    let keys = rt.block_on(async {
        let discovery = identity::fetch::discovery(issuer).await?;
        identity::fetch::jwks(issuer, &discovery.jwks_uri).await
    });
    let keys = keys.map_err(|e| format!("{name}: {e}; {fix}"))?;
    let usable = keys
        .keys
        .iter()
        .filter(|k| jsonwebtoken::DecodingKey::from_jwk(k).is_ok())
        .count();
    if usable == 0 {
        return Err(format!(
            "{name}: the JWKS has no RSA, P-256 or Ed25519 key; tokens from it cannot be checked"
        ));
    }
    Ok(format!(
        "{name}: discovery and JWKS reachable, {usable} usable key(s)"
    ))
}

fn redis(cfg: &Config) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(State::open(&cfg.gateway))
        .map(|_| "reachable".into())
        .map_err(|e| format!("{e}; start redis-server or fix gateway.redis_url"))
}

/// Whether Redis refuses a write from a client that did not authenticate:
/// anything that can write there could otherwise forge state (a refused
/// record is only refused; it still denies service). The probe is a
/// `SET sluice:doctor:probe` that expires after one second.
fn redis_auth(cfg: &Config) -> Result<String, String> {
    let url = &cfg.gateway.redis_url;
    let anonymous = match url.split_once("://") {
        Some((scheme, rest)) => format!(
            "{scheme}://{}",
            rest.rsplit_once('@').map_or(rest, |(_, h)| h)
        ),
        None => url.clone(),
    };
    let client = redis::Client::open(anonymous).map_err(|e| format!("gateway.redis_url: {e}"))?;
    let addr = client.get_connection_info().addr().to_string();
    let mut conn = client
        .get_connection_with_timeout(crate::state::CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot reach Redis at {addr}: {e}"))?;
    let written: redis::RedisResult<()> = redis::cmd("SET")
        .arg(PROBE_KEY)
        .arg("1")
        .arg("PX")
        .arg(1000)
        .query(&mut conn);
    match written {
        Ok(()) => {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(PROBE_KEY).query(&mut conn);
            Err(format!("Redis at {addr} accepts writes without authentication: set requirepass or an ACL user in redis.conf and its password in gateway.redis_password_file (the package's postinst does this)"))
        }
        Err(e) if matches!(e.code(), Some("NOAUTH" | "NOPERM")) => {
            Ok(format!("Redis at {addr} refuses unauthenticated writes"))
        }
        Err(e) => Err(format!(
            "Redis at {addr}: cannot tell whether it requires authentication: {e}"
        )),
    }
}

const PROBE_KEY: &str = "sluice:doctor:probe";

fn attached(cfg: &Config) -> Result<String, String> {
    let missing: Vec<&str> = cfg
        .agents
        .iter()
        .filter(|a| {
            !programs::links_dir(&cfg.gateway.bpf_dir, &a.name)
                .join(programs::SOCK_ADDR_PROGRAMS[0])
                .exists()
        })
        .map(|a| a.name.as_str())
        .collect();
    if missing.is_empty() {
        Ok(format!("programs pinned for {} agent(s)", cfg.agents.len()))
    } else {
        Err(format!(
            "not attached for agent(s) {}: start `sluice run` (or `systemctl start sluice`)",
            missing.join(", ")
        ))
    }
}

/// Whether `agent` runs under a uid of its own: `Err` (a warning, not a
/// failure) when it has no `user =` or its uid has processes outside its
/// cgroup, whose sockets it could take in uninterceptable (pidfd_getfd,
/// SCM_RIGHTS; README security notes).
fn own_uid(agent: &Agent) -> Result<String, String> {
    let Some(spec) = agent.user.as_deref() else {
        return Err(format!(
            "agent {:?} has no `user =`: its commands run as the caller's uid, whose processes outside its cgroup can hand it uninterceptable sockets; give it a user of its own",
            agent.name
        ));
    };
    let uid = match spec.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => nix::unistd::User::from_name(spec)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
            .ok_or_else(|| format!("agent {:?}: user {spec:?} does not exist", agent.name))?,
    };
    let others = procs::outside(uid, &agent.cgroup, std::process::id());
    if others.is_empty() {
        Ok(format!(
            "agent {:?} runs as uid {uid}, which has no process outside its cgroup",
            agent.name
        ))
    } else {
        Err(format!(
            "agent {:?}'s uid {uid} has {} process(es) outside its cgroup ({}); their sockets escape interception if handed to the agent",
            agent.name,
            others.len(),
            procs::describe(&others)
        ))
    }
}
