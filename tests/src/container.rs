//! Containers for the end-to-end tests (DESIGN.md §8): a Linux bridge in
//! the host's network namespace, one network namespace per container joined
//! to it by a veth pair, and real OCI containers run by Debian's `runc`
//! whose rootfs is the host's `/usr` and `/etc`, bind-mounted read-only.
//!
//! A [`Container`] runs each command as a fresh `runc run` in the same
//! network namespace and the same cgroup below an agent cgroup, like
//! `docker run --cgroup-parent=<agent cgroup>` does. runc (not crun, which
//! refuses hybrid cgroup hosts) also creates that cgroup in each cgroup v1
//! hierarchy; drop removes what it leaves there.
//!
//! Everything here is the test's own and carries a unique name: addresses
//! come from `10.213.0.0/16`, a /24 no host route uses; drop deletes the
//! namespaces (which takes their veth ends along) and then the bridge.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, AtomicU8, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{cgroup, process, Sluice};

/// How long one command in a container may run.
const RUN_TIMEOUT: Duration = Duration::from_secs(40);

fn ip(args: &[&str]) -> Result<()> {
    let out =
        process::output_with_timeout(Command::new("ip").args(args), None, Duration::from_secs(10))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A Linux bridge with the host's address `10.213.N.1/24`.
pub struct Bridge {
    pub name: String,
    /// The host's address on the bridge: what containers reach the host at.
    pub addr: Ipv4Addr,
    next_host: AtomicU8,
}

impl Bridge {
    /// Creates the bridge on a /24 of `10.213.0.0/16` that no route of the
    /// host covers yet.
    pub fn create() -> Result<Bridge> {
        // Tests of one process start apart; the route check covers others.
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let routes = Command::new("ip").args(["-4", "route", "show"]).output()?;
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        let start = (std::process::id() as u8).wrapping_add(NEXT.fetch_add(37, Ordering::Relaxed));
        let third = (0..=255u8)
            .map(|i| start.wrapping_add(i))
            .find(|n| !routes.contains(&format!("10.213.{n}.")))
            .context("no free /24 in 10.213.0.0/16")?;
        let bridge = Bridge {
            name: format!("slbr{}", crate::random_hex(4)),
            addr: Ipv4Addr::new(10, 213, third, 1),
            next_host: AtomicU8::new(2),
        };
        ip(&["link", "add", &bridge.name, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", bridge.addr),
            "dev",
            &bridge.name,
        ])?;
        ip(&["link", "set", &bridge.name, "up"])?;
        Ok(bridge)
    }

    /// A fresh network namespace with `eth0` on this bridge (the next free
    /// address), `lo` up and a default route via the bridge address.
    pub fn netns(&self) -> Result<Netns> {
        let tag = crate::random_hex(4);
        let host_n = self.next_host.fetch_add(1, Ordering::Relaxed);
        let [a, b, c, _] = self.addr.octets();
        let ns = Netns {
            name: format!("sluice-test-{tag}"),
            addr: Ipv4Addr::new(a, b, c, host_n),
            host_veth: format!("slvh{tag}"),
        };
        let peer = format!("slvc{tag}");
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&["link", "set", &ns.host_veth, "master", &self.name, "up"])?;
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", &peer, "name", "eth0"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/24", ns.addr),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "default",
            "via",
            &self.addr.to_string(),
        ])?;
        Ok(ns)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// A network namespace of the test, `/run/netns/<name>`.
pub struct Netns {
    pub name: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    /// The veth end on the bridge, in the host's namespace.
    pub host_veth: String,
}

impl Netns {
    /// `/run/netns/<name>`, for the OCI config.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        // Deleting the namespace destroyed the pair; this only matters if
        // moving the peer failed half way.
        let _ = ip(&["link", "del", &self.host_veth]);
    }
}

/// What a [`Container`] mounts from the host besides `/usr` and `/etc`.
pub struct Bind<'a> {
    pub source: &'a Path,
    /// Path inside the container (a file).
    pub target: &'a str,
}

/// A container in its own network namespace, whose cgroup is
/// `<agent cgroup>/<name>`.
pub struct Container {
    pub netns: Netns,
    /// Its cgroup, relative to the cgroup mounts (`sluice-test/x-agent/ctr-a`).
    cgroup_rel: String,
    dir: tempfile::TempDir,
    config: serde_json::Value,
    runs: AtomicU32,
}

impl Container {
    /// Prepares container `name` below the agent cgroup `agent_cgroup_rel`
    /// (relative to the cgroup2 mount), in `netns`, with `binds`.
    pub fn new(name: &str, netns: Netns, agent_cgroup_rel: &str, binds: &[Bind]) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-ctr-{name}-"))
            .tempdir()?;
        let rootfs = dir.path().join("rootfs");
        for d in ["usr", "etc", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        for l in ["bin", "lib", "lib64", "sbin"] {
            std::os::unix::fs::symlink(format!("usr/{l}"), rootfs.join(l))?;
        }
        let spec = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()
            .context("runc spec (is runc installed? cargo xtask setup)")?;
        if !spec.status.success() {
            bail!("runc spec: {}", String::from_utf8_lossy(&spec.stderr));
        }
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json"))?)?;
        let cgroup_rel = format!("{}/{name}", agent_cgroup_rel.trim_matches('/'));
        config["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
        config["hostname"] = name.into();
        config["linux"]["cgroupsPath"] = format!("/{cgroup_rel}").into();
        for ns in config["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
        {
            if ns["type"] == "network" {
                ns["path"] = netns.path().to_str().expect("utf-8").into();
            }
        }
        let mounts = config["mounts"].as_array_mut().expect("mounts");
        let bind = |source: &Path, target: &str| {
            serde_json::json!({
                "destination": target, "type": "bind", "source": source,
                "options": ["rbind", "ro", "nosuid", "nodev"],
            })
        };
        mounts.push(bind(Path::new("/usr"), "/usr"));
        mounts.push(bind(Path::new("/etc"), "/etc"));
        mounts.push(serde_json::json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        }));
        for b in binds {
            if !b.target.starts_with("/etc/") {
                std::fs::write(rootfs.join(b.target.trim_start_matches('/')), "")?;
            }
            mounts.push(bind(b.source, b.target));
        }
        Ok(Container {
            netns,
            cgroup_rel,
            dir,
            config,
            runs: AtomicU32::new(0),
        })
    }

    /// The container's cgroup as Sluice records it (`/sluice-test/…/name`).
    pub fn cgroup(&self) -> String {
        format!("/{}", self.cgroup_rel)
    }

    /// Runs `argv` with `env` in a fresh `runc run` of this container and
    /// waits (at most 40 s); the output is captured in `sluice` for the
    /// secret scans.
    pub fn run(&self, sluice: &Sluice, env: &[(&str, &str)], argv: &[&str]) -> Result<Output> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.netns.name);
        let bundle = self.dir.path().join(format!("run-{n}"));
        std::fs::create_dir_all(&bundle)?;
        let mut config = self.config.clone();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = argv.into();
        let mut vars = vec![
            "PATH=/usr/local/bin:/usr/bin:/usr/sbin".to_string(),
            "HOME=/tmp".into(),
        ];
        vars.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        config["process"]["env"] = vars.into();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        let state = self.dir.path().join("runc-state");
        let mut cmd = Command::new("runc");
        cmd.arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id);
        let out = process::output_with_timeout(&mut cmd, None, RUN_TIMEOUT);
        // Gone after a normal exit; forced after a timeout.
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", &id])
            .output();
        let out = out?;
        let label = format!("container {}: {}", self.netns.name, argv.join(" "));
        sluice.capture_text(&label, &String::from_utf8_lossy(&out.stdout));
        sluice.capture_text(&label, &String::from_utf8_lossy(&out.stderr));
        Ok(out)
    }
}

impl Drop for Container {
    /// Removes the container's cgroup from every hierarchy, and in the
    /// cgroup v1 ones also the parents runc made for it (they stay when
    /// another container still uses them); the cgroup2 parents are the
    /// agent's, removed by the stack.
    fn drop(&mut self) {
        let parts: Vec<&str> = self.cgroup_rel.split('/').collect();
        let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
            return;
        };
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dir, fstype) = (f[1], f[2]);
            let depth = match fstype {
                "cgroup2" => parts.len() - 1,
                "cgroup" => 0,
                _ => continue,
            };
            for end in (depth + 1..=parts.len()).rev() {
                let path = Path::new(dir).join(parts[..end].join("/"));
                let _ = cgroup::remove_empty(&path);
            }
        }
    }
}

/// Everything of a container test that may outlive it: network namespaces
/// and links whose names contain one of `names`, and directories of the
/// cgroup `cgroup_rel` in any hierarchy. For "nothing left behind".
pub fn leftovers(names: &[&str], cgroup_rel: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if matches!(f[2], "cgroup" | "cgroup2") {
            let path = Path::new(f[1]).join(cgroup_rel.trim_matches('/'));
            if path.exists() {
                found.push(format!("cgroup {}", path.display()));
            }
        }
    }
    for (what, args) in [
        ("netns", vec!["netns", "list"]),
        ("link", vec!["-o", "link", "show"]),
    ] {
        let out = Command::new("ip")
            .args(&args)
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        for n in names {
            if text.contains(n) {
                found.push(format!("{what} {n}"));
            }
        }
    }
    found
}
