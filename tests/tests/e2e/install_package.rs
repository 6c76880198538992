//! The Debian package on this very machine: `dpkg -i`, what its postinst
//! leaves (groups, directories, vault key, local CA, config) and with which
//! modes; a reinstall changes none of it; `sluice doctor` passes on the
//! package's config; the packaged daemon runs with only the unit's
//! capabilities on the package's directories; `dpkg --purge` removes pins
//! and config but keeps secrets and records, and `SLUICE_PURGE_DATA=1`
//! removes those too.
//!
//! The package (`SLUICE_DEB`) is the debug binary packaged by
//! `cargo xtask test` (`cargo xtask dist --dev`). The service is never
//! started: the daemon run here has no agents, so it attaches to no cgroup.
//!
//! The machine is left as found. The test refuses to run where a `sluice`
//! package, its directories or `/sys/fs/bpf/sluice` already exist (purging
//! would destroy them). It removes, at the end or on failure, the package,
//! those directories and the two groups if they did not exist before; the
//! package itself keeps the groups on purge (see packaging/debian/postrm).
use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use sluice_tests::{process, sluice::READY_TIMEOUT, Redis};

const PACKAGE: &str = "sluice";
const BIN: &str = "/usr/bin/sluice";
const ETC: &str = "/etc/sluice";
const STATE: &str = "/var/lib/sluice";
const LOG: &str = "/var/log/sluice";
const PINS: &str = "/sys/fs/bpf/sluice";
const UNIT_DIR: &str = "/usr/lib/systemd/system";
const GROUPS: [&str; 2] = ["sluice-admin", "sluice-audit"];
const DPKG_TIMEOUT: Duration = Duration::from_secs(180);

/// The package under test.
fn deb() -> PathBuf {
    let deb = std::env::var_os("SLUICE_DEB")
        .map(PathBuf::from)
        .expect("SLUICE_DEB is not set: run `cargo xtask test`, or `cargo xtask dist --dev` and set SLUICE_DEB");
    assert!(deb.is_file(), "SLUICE_DEB={} does not exist", deb.display());
    deb
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a dpkg command (with `env`) that must succeed; returns its output.
/// Without `SLUICE_REDIS_CONF` in `env`, the postinst is told to leave
/// Redis alone (`SLUICE_REDIS_SETUP=no`): the machine's redis.conf is never
/// touched.
fn dpkg(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("dpkg");
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    for var in [
        "SLUICE_INSTALL_BIN",
        "SLUICE_CONFIG",
        "CREDENTIALS_DIRECTORY",
        "SLUICE_PURGE_DATA",
        "SLUICE_REDIS_CONF",
        "SLUICE_REDIS_SETUP",
    ] {
        cmd.env_remove(var);
    }
    if !env.iter().any(|(k, _)| *k == "SLUICE_REDIS_CONF") {
        cmd.env("SLUICE_REDIS_SETUP", "no");
    }
    cmd.envs(env.iter().copied());
    let out = process::output_with_timeout(&mut cmd, None, DPKG_TIMEOUT).unwrap();
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "dpkg {args:?} failed with {}:\n{text}",
        out.status
    );
    text
}

/// The package's dpkg status (`installed`, `config-files`, …), `None` when
/// dpkg has never heard of it.
fn package_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PACKAGE])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !status.is_empty() && status != "not-installed").then_some(status)
}

fn group_gid(name: &str) -> Option<u32> {
    let out = Command::new("getent").args(["group", name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)?
        .trim()
        .parse()
        .ok()
}

/// (mode with file type bits masked off, uid, gid).
fn owner_mode(path: &str) -> (u32, u32, u32) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn exists(path: &str) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Serialises package tests across test processes on this machine and puts
/// the machine back as it was, also when the test fails.
struct Machine {
    _lock: fs::File,
    groups_created: Vec<&'static str>,
}

impl Machine {
    fn claim() -> Machine {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/sluice-package-test.lock")
            .expect("open the package test lock");
        // SAFETY: flock on an fd we own.
        assert_eq!(
            unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
            0
        );
        if let Some(status) = package_status() {
            panic!("the {PACKAGE} package is already on this machine ({status}); this test would purge it");
        }
        for path in [ETC, STATE, LOG, PINS, BIN] {
            assert!(!exists(path), "{path} exists on this machine; this test installs and purges the package, which would change it");
        }
        let groups_created = GROUPS
            .into_iter()
            .filter(|g| group_gid(g).is_none())
            .collect();
        Machine {
            _lock: lock,
            groups_created,
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if package_status().is_some() {
            let _ = Command::new("dpkg")
                .args(["--purge", PACKAGE])
                .env("SLUICE_PURGE_DATA", "1")
                .output();
        }
        // All of these were absent when the test began.
        if exists(LOG) {
            let _ = Command::new("chattr").args(["-R", "-a", LOG]).output();
        }
        for dir in [ETC, STATE, LOG, PINS] {
            if exists(dir) {
                let _ = fs::remove_dir_all(dir);
            }
        }
        for group in &self.groups_created {
            if group_gid(group).is_some() {
                let _ = Command::new("groupdel").arg(group).output();
            }
        }
    }
}

/// A file as found: path, bytes, (mode, uid, gid).
type Snapshot = (String, Vec<u8>, (u32, u32, u32));

/// The files a reinstall must not touch: vault key, CA key, CA
/// certificate, Redis password.
fn secrets() -> Vec<Snapshot> {
    [
        format!("{ETC}/vault.key"),
        format!("{STATE}/ca/ca.key"),
        format!("{STATE}/ca/ca.pem"),
        format!("{ETC}/redis.password"),
    ]
    .into_iter()
    .map(|p| {
        let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
        let meta = owner_mode(&p);
        (p, bytes, meta)
    })
    .collect()
}

fn assert_installed_layout() {
    assert_eq!(package_status().as_deref(), Some("installed"));
    let admin = group_gid("sluice-admin").expect("postinst creates group sluice-admin");
    let audit = group_gid("sluice-audit").expect("postinst creates group sluice-audit");
    assert_eq!(owner_mode(BIN).0, 0o755);
    for unit in ["sluice.service", "sluice-agents.slice"] {
        assert!(
            Path::new(UNIT_DIR).join(unit).is_file(),
            "{unit} not in {UNIT_DIR}"
        );
    }
    let example = fs::read_to_string(format!("{ETC}/sluice.toml.example")).unwrap();
    assert_eq!(
        owner_mode(&format!("{ETC}/sluice.toml")),
        (0o640, 0, admin),
        "config: 0640 root:sluice-admin"
    );
    assert!(
        fs::read_to_string(format!("{ETC}/sluice.toml"))
            .unwrap()
            .starts_with(&example),
        "config is the example"
    );

    let key = format!("{ETC}/vault.key");
    assert_eq!(owner_mode(&key), (0o600, 0, 0), "vault key: 0600 root");
    assert_eq!(fs::read(&key).unwrap().len(), 32, "vault key: 32 bytes");
    for (file, len) in [("approvals.key", 32), ("redis.password", 40)] {
        let path = format!("{ETC}/{file}");
        assert_eq!(
            owner_mode(&path),
            (0o640, 0, admin),
            "{file}: 0640 root:sluice-admin"
        );
        assert_eq!(fs::read(&path).unwrap().len(), len, "{file}: {len} bytes");
    }
    assert_eq!(owner_mode(STATE), (0o750, 0, 0));
    assert_eq!(owner_mode(&format!("{STATE}/ca")).0, 0o700);
    assert_eq!(
        owner_mode(&format!("{STATE}/ca/ca.key")),
        (0o600, 0, 0),
        "CA key: 0600 root"
    );
    assert!(fs::read_to_string(format!("{STATE}/ca/ca.pem"))
        .unwrap()
        .contains("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        owner_mode(LOG),
        (0o2750, 0, audit),
        "log dir: 2750 root:sluice-audit"
    );
    assert_eq!(owner_mode(&format!("{LOG}/sessions")), (0o2750, 0, audit));

    // Installing neither starts nor attaches anything.
    assert!(!exists(PINS), "{PINS} exists: something ran the daemon");
    let running: Vec<_> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| fs::read_link(e.path().join("exe")).is_ok_and(|exe| exe == Path::new(BIN)))
        .map(|e| e.file_name())
        .collect();
    assert!(
        running.is_empty(),
        "{BIN} is running after install: pids {running:?}"
    );
}

/// The postinst appended one `# BEGIN sluice` block to `conf` (the ACL user
/// by its password's SHA-256, never the password; the default user off)
/// and applied it to the running test Redis: anonymous writes are refused.
#[track_caller]
fn assert_redis_secured(conf: &Path) {
    use sha2::{Digest, Sha256};
    let text = fs::read_to_string(conf).unwrap();
    let password = fs::read_to_string(format!("{ETC}/redis.password")).unwrap();
    let hash = hex::encode(Sha256::digest(password.trim_end().as_bytes()));
    assert_eq!(text.matches("# BEGIN sluice").count(), 1, "{text}");
    assert!(
        text.contains(&format!("user sluice on #{hash} ~sluice:* &sluice:* ")),
        "{text}"
    );
    assert!(text.contains("\nuser default off\n"), "{text}");
    assert!(
        !text.contains(password.trim_end()),
        "the password is in {}",
        conf.display()
    );
}

/// The package's config with its Redis pointed at `redis_url` and, if
/// given, its listener moved to `listen`.
fn adapted_config(dir: &Path, redis_url: &str, listen: Option<&str>) -> PathBuf {
    let text = fs::read_to_string(format!("{ETC}/sluice.toml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match (key, listen) {
            ("redis_url", _) => out.push_str(&format!("redis_url = {redis_url:?}")),
            ("listen", Some(addr)) => out.push_str(&format!("listen = {addr:?}")),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let path = dir.join("sluice.toml");
    fs::write(&path, out).unwrap();
    path
}

/// `setpriv` arguments that give a root process exactly the unit's
/// `CapabilityBoundingSet=`, as systemd would.
fn unit_capabilities() -> String {
    let unit = fs::read_to_string(Path::new(UNIT_DIR).join("sluice.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))
        .flat_map(|v| {
            v.split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        })
        .collect();
    assert!(
        !caps.is_empty(),
        "no CapabilityBoundingSet= in the installed unit"
    );
    format!("-all,{}", caps.join(","))
}

/// A child stopped by PID when dropped (before the package is purged).
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        process::stop(&mut self.0, Duration::from_secs(5));
    }
}

/// Runs the packaged daemon as sluice.service would (the unit's bounding
/// set, no new privileges, the key from `$CREDENTIALS_DIRECTORY`, JSON
/// logs) on the package's directories, until READY=1; then stops it.
/// Returns its log.
fn run_packaged_daemon(dir: &Path, config: &Path) -> String {
    let creds = dir.join("credentials");
    fs::create_dir(&creds).unwrap();
    fs::copy(format!("{ETC}/vault.key"), creds.join("vault.key")).unwrap();
    fs::set_permissions(creds.join("vault.key"), fs::Permissions::from_mode(0o400)).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(READY_TIMEOUT)).unwrap();
    let stderr = dir.join("daemon.stderr.log");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set={}", unit_capabilities()))
        .args([
            "--no-new-privs",
            "--",
            BIN,
            "run",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("CREDENTIALS_DIRECTORY", &creds)
        .env("RUST_LOG", "info")
        .env_remove("SLUICE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap());
    let mut daemon = Stopped(
        process::die_with_parent(&mut cmd)
            .spawn()
            .expect("start setpriv sluice run"),
    );
    let mut buf = [0u8; 512];
    let ready = notify
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    let log = || fs::read_to_string(&stderr).unwrap_or_default();
    let ready =
        ready.unwrap_or_else(|e| panic!("the packaged daemon sent no READY=1 ({e}):\n{}", log()));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let pinned_maps = fs::read_dir(format!("{PINS}/maps"))
        .map(|d| d.count())
        .unwrap_or(0);
    process::signal(daemon.0.id(), libc::SIGTERM);
    let status = process::wait_timeout(&mut daemon.0, Duration::from_secs(10)).unwrap();
    // The daemon installs its SIGTERM handler just after READY=1, so a
    // SIGTERM this early may still meet the default action; both are a stop.
    let stopped = status.is_some_and(|s| {
        s.success() || std::os::unix::process::ExitStatusExt::signal(&s) == Some(libc::SIGTERM)
    });
    assert!(
        stopped,
        "daemon did not stop on SIGTERM ({status:?}):\n{}",
        log()
    );
    assert!(
        pinned_maps > 0,
        "no maps pinned under {PINS}/maps:\n{}",
        log()
    );
    log()
}

#[test]
fn the_deb_installs_keeps_its_secrets_on_reinstall_passes_doctor_and_purges_cleanly() {
    let deb = deb();
    let machine = Machine::claim();
    let deb = deb.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The Redis the postinst secures: a test server (open, as Debian ships
    // it) and a redis.conf of its own naming its port.
    let redis = Redis::start(&tmp.path().join("redis")).unwrap();
    let redis_conf = tmp.path().join("redis.conf");
    fs::write(&redis_conf, format!("port {}\n", redis.port())).unwrap();
    let redis_env = [("SLUICE_REDIS_CONF", redis_conf.to_str().unwrap())];

    // Install.
    dpkg(&["-i", deb], &redis_env);
    assert_installed_layout();
    assert_redis_secured(&redis_conf);
    let installed = secrets();
    let ca_cert = Command::new(BIN)
        .args(["--config", &format!("{ETC}/sluice.toml"), "ca", "cert"])
        .output()
        .unwrap();
    assert_eq!(
        ca_cert.stdout, installed[2].1,
        "sluice ca cert prints the CA the postinst made"
    );

    // The installed units, as installed, pass systemd-analyze verify.
    let units = [
        format!("{UNIT_DIR}/sluice.service"),
        format!("{UNIT_DIR}/sluice-agents.slice"),
    ];
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "verify installed units:\n{}",
        output_text(&verify)
    );

    // Reinstall: same key, same CA, and the admin's edit of the config stays.
    fs::write(
        format!("{ETC}/sluice.toml"),
        format!(
            "{}# edited by the admin\n",
            fs::read_to_string(format!("{ETC}/sluice.toml")).unwrap()
        ),
    )
    .unwrap();
    dpkg(&["-i", deb], &redis_env);
    assert_installed_layout();
    assert_redis_secured(&redis_conf);
    assert_eq!(
        secrets(),
        installed,
        "a reinstall changed the vault key, the Redis password or the CA"
    );
    assert!(fs::read_to_string(format!("{ETC}/sluice.toml"))
        .unwrap()
        .ends_with("# edited by the admin\n"));

    // sluice doctor on the package's config, with Redis at the test server
    // the postinst secured: every check passes, Redis authentication
    // included (the config has no agents yet, so "attached" holds).
    let redis_url = format!("redis://sluice@127.0.0.1:{}/0", redis.port());
    let config = adapted_config(tmp.path(), &redis_url, None);
    let doctor = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("doctor")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let report = output_text(&doctor);
    assert!(doctor.status.success(), "sluice doctor failed:\n{report}");
    assert!(
        report.contains(&format!("{ETC}/vault.key is 32 bytes, mode 600")),
        "{report}"
    );
    assert!(
        report.lines().filter(|l| l.starts_with("FAIL")).count() == 0,
        "{report}"
    );

    // The packaged daemon, confined to the unit's capabilities, starts on
    // the package's directories: records get sluice-audit from the setgid
    // log dir without CAP_CHOWN, logs are JSON, the pins land in PINS.
    let listen = format!(
        "127.0.0.1:{}",
        process::free_port(std::net::Ipv4Addr::LOCALHOST.into()).unwrap()
    );
    let config = adapted_config(tmp.path(), &redis_url, Some(&listen));
    let log = run_packaged_daemon(tmp.path(), &config);
    assert!(
        !log.contains("cannot give the file"),
        "records did not get the sluice-audit group:\n{log}"
    );
    assert!(
        !log.contains("created a new vault key"),
        "the daemon made its own vault key:\n{log}"
    );
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
    let audit = group_gid("sluice-audit").unwrap();
    assert_eq!(owner_mode(&format!("{LOG}/audit.jsonl")), (0o640, 0, audit));
    assert!(exists(PINS), "the daemon pinned nothing under {PINS}");

    // Purge: pins and config go; vault key, CA and records stay, unchanged.
    dpkg(&["--purge", PACKAGE], &[]);
    assert_eq!(package_status(), None);
    for gone in [
        BIN,
        PINS,
        &format!("{ETC}/sluice.toml"),
        &format!("{ETC}/sluice.toml.example"),
        &format!("{UNIT_DIR}/sluice.service"),
    ] {
        assert!(!exists(gone), "{gone} is still there after purge");
    }
    assert!(
        !exists("/etc/systemd/system/sluice.service"),
        "purge left a mask for sluice.service"
    );
    assert_eq!(
        secrets(),
        installed,
        "purge without SLUICE_PURGE_DATA=1 touched the key or the CA"
    );
    assert!(
        exists(&format!("{LOG}/audit.jsonl")),
        "purge removed the records"
    );
    assert!(
        GROUPS.iter().all(|g| group_gid(g).is_some()),
        "purge removed a group"
    );

    // Installing again adopts what was kept.
    dpkg(&["-i", deb], &redis_env);
    assert_installed_layout();
    assert_eq!(
        secrets(),
        installed,
        "a reinstall after purge replaced the kept key or CA"
    );

    // SLUICE_PURGE_DATA=1: secrets and records go too.
    dpkg(&["--purge", PACKAGE], &[("SLUICE_PURGE_DATA", "1")]);
    for gone in [ETC, STATE, LOG, PINS, BIN] {
        assert!(
            !exists(gone),
            "{gone} is still there after SLUICE_PURGE_DATA=1 purge"
        );
    }
    drop(redis);
    let created = machine.groups_created.clone();
    drop(machine);
    for group in created {
        assert!(
            group_gid(group).is_none(),
            "group {group}, which the test's install created, is left behind"
        );
    }
}
