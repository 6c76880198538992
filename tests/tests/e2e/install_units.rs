//! The shipped systemd units, the README's agent drop-in and the example
//! config: `systemd-analyze verify` passes on each, the service keeps its
//! hardening, and the example loads.
//!
//! Nothing here starts a unit: `systemd-analyze` only parses.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use sluice_tests::sluice_bin;

/// The workspace root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// `systemd/*.service` and `systemd/*.slice`.
fn shipped_units() -> Vec<PathBuf> {
    let mut units: Vec<PathBuf> = fs::read_dir(repo().join("systemd"))
        .expect("systemd/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "service" || e == "slice")
        })
        .collect();
    units.sort();
    units
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `systemd-analyze verify --man=no` on `units`; any complaint about
/// them (even one systemd only warns about) fails, with the full output.
fn assert_verifies(units: &[PathBuf]) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .output()
        .expect("run systemd-analyze");
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let dir = units[0].parent().unwrap().to_string_lossy().into_owned();
    let all = text(&out);
    let about_ours: Vec<&str> = all
        .lines()
        .filter(|l| l.contains(&dir) || names.iter().any(|n| l.contains(n.as_str())))
        .collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify {names:?}: {}\n{all}",
        out.status
    );
}

/// A copy of the shipped units in a temp dir, `/usr/bin/sluice` (the
/// packaged path, absent on a build host) pointing at the binary under test.
fn units_for_this_host(dir: &Path) -> Vec<PathBuf> {
    let bin = sluice_bin();
    assert!(bin.is_file(), "no sluice binary at {}", bin.display());
    shipped_units()
        .iter()
        .map(|unit| {
            let dest = dir.join(unit.file_name().unwrap());
            let text = fs::read_to_string(unit)
                .unwrap()
                .replace("/usr/bin/sluice", bin.to_str().unwrap());
            fs::write(&dest, text).unwrap();
            dest
        })
        .collect()
}

/// The fenced block of README.md that contains `needle`.
fn readme_block(needle: &str) -> String {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    readme
        .split("```")
        .skip(1)
        .step_by(2)
        .find(|b| b.contains(needle))
        .map(|b| {
            b.split_once('\n')
                .map_or("", |(_lang, body)| body)
                .to_string()
        })
        .unwrap_or_else(|| panic!("README.md has no code block with {needle:?}"))
}

/// `key=value` lines of a unit file, in order (comments and sections skipped).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn every_shipped_unit_passes_systemd_analyze_verify() {
    let units = shipped_units();
    let names: Vec<_> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["sluice-agents.slice", "sluice.service"]);
    let dir = tempfile::tempdir().unwrap();
    assert_verifies(&units_for_this_host(dir.path()));
}

#[test]
fn the_readme_drop_in_puts_an_agent_service_under_the_agents_slice() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = units_for_this_host(dir.path());
    let agent = dir.path().join("myagent.service");
    fs::write(
        &agent,
        "[Unit]\nDescription=an existing agent service\n\n[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let drop_in = readme_block("Slice=sluice-agents-myagent.slice");
    fs::create_dir(dir.path().join("myagent.service.d")).unwrap();
    fs::write(dir.path().join("myagent.service.d/sluice.conf"), &drop_in).unwrap();
    units.push(agent);
    assert_verifies(&units);

    // The slice the drop-in names is the cgroup the README's [[agent]] names,
    // and it sits below sluice-agents.slice (systemd.slice(5): dashes nest).
    let slice = directives(&drop_in)
        .into_iter()
        .find(|(k, _)| k == "Slice")
        .map(|(_, v)| v)
        .unwrap();
    let agent_toml = readme_block("[[agent]]\nname   = \"myagent\"");
    assert!(
        agent_toml.contains(&format!("cgroup = {slice:?}")),
        "README [[agent]] does not name {slice}:\n{agent_toml}"
    );
    assert!(
        slice.starts_with("sluice-agents-") && slice.ends_with(".slice"),
        "{slice} is not a child of sluice-agents.slice"
    );
    let order: Vec<(String, String)> = directives(&drop_in)
        .into_iter()
        .filter(|(k, _)| k == "After")
        .collect();
    assert_eq!(
        order,
        [("After".to_string(), "sluice.service".to_string())],
        "agents start only once Sluice is ready"
    );
}

#[test]
fn sluice_service_is_notify_reloadable_and_hardened_with_a_low_exposure_score() {
    let unit_path = repo().join("systemd/sluice.service");
    let unit = fs::read_to_string(&unit_path).unwrap();
    let d = directives(&unit);
    let get = |key: &str| -> Vec<&str> {
        d.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("Type"), ["notify"]);
    assert_eq!(
        get("ExecStart"),
        ["/usr/bin/sluice run --config /etc/sluice/sluice.toml --log-format json"]
    );
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(get("Restart"), ["on-failure"]);
    assert_eq!(get("LoadCredential"), ["vault.key:/etc/sluice/vault.key"]);
    assert!(
        get("ExecStopPost").is_empty(),
        "stopping must leave the pins: agents fail closed"
    );
    assert_eq!(get("ProtectSystem"), ["strict"]);
    assert_eq!(
        get("ReadWritePaths"),
        ["/var/lib/sluice /var/log/sluice /sys/fs/bpf/sluice"]
    );
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert_eq!(get("MemoryDenyWriteExecute"), ["yes"]);
    assert_eq!(get("SystemCallFilter"), ["@system-service bpf"]);
    let mut caps: Vec<&str> = get("CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "CAP_BPF",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_ADMIN",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN"
        ]
    );
    assert!(
        get("LimitNOFILE")
            .iter()
            .all(|n| n.parse::<u64>().is_ok_and(|n| n >= 65536))
            && !get("LimitNOFILE").is_empty()
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit_path)
        .output()
        .expect("run systemd-analyze security");
    let report = text(&out);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for sluice.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    println!("systemd-analyze security sluice.service: exposure {score}");
    assert!(score <= 3.0, "exposure {score} > 3.0:\n{report}");
}

#[test]
fn the_example_config_loads_as_shipped_and_with_its_examples_uncommented() {
    let example = fs::read_to_string(repo().join("packaging/sluice.toml.example")).unwrap();
    // "# [[agent]]" and "# name = …" lines become live; prose comments stay.
    let keys = [
        "name",
        "cgroup",
        "protocol",
        "upstream",
        "upstream_tls",
        "credential",
        "deny",
        "approve",
        "mask",
    ];
    let uncommented: String = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("[[")
                    || keys.iter().any(|k| rest.starts_with(&format!("{k} "))) =>
            {
                rest
            }
            _ => l,
        })
        .fold(String::new(), |acc, l| acc + l + "\n");
    let tables: Vec<&str> = uncommented
        .lines()
        .filter(|l| l.starts_with("[["))
        .collect();
    assert_eq!(tables, ["[[agent]]", "[[service]]", "[[service]]"]);
    let dir = tempfile::tempdir().unwrap();
    for (name, config) in [
        ("as-shipped.toml", example.as_str()),
        ("uncommented.toml", uncommented.as_str()),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, config).unwrap();
        // doctor reports a config that does not load instead of exiting 2.
        let out = Command::new(sluice_bin())
            .arg("--config")
            .arg(&path)
            .arg("doctor")
            .env_remove("SLUICE_CONFIG")
            .output()
            .unwrap();
        let report = text(&out);
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("ok") && l.contains("config") && l.contains("loads")),
            "{name} does not load:\n{report}"
        );
    }
}
