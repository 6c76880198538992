//! Scenario `scp`: an unmodified OpenSSH `scp` copying one file of random
//! bytes (`Mode::scp_mib`) up to the rig's sshd, directly and through
//! Sluice, interleaved.
//!
//! Direct runs log in with the real key (the sshd's authorized key) from
//! outside any agent cgroup, trusting the sshd's own host key. Sluice runs
//! are the agent: `sluice exec` puts scp in the agent cgroup, it dials
//! `ssh.bench.test` (the rig's hosts file), the eBPF redirect sends it to
//! Sluice, it logs in with the placeholder key of `sluice token issue
//! --ssh-key` and trusts only `sluice ssh known-hosts`; Sluice logs in
//! upstream with the real key from the vault. The sshd would refuse the
//! placeholder key, so a run that succeeds went through Sluice. Neither
//! side chooses a cipher: each pair negotiates its own default.
//!
//! OpenSSH ≥ 9.0 `scp` speaks SFTP (the `sftp` subsystem) unless given
//! `-O`; this is what the scenario measures. Every arrival is compared
//! with the original byte for byte, so a broken copy fails the run.
//!
//! The rate is the file's size over the wall time of the whole `scp`
//! command, key exchange and login included: about half a second on a
//! loaded 2-core host, which weighs on the 32 MiB of `--quick` (indicative
//! only) and little on the 256 MiB of a full run.
use std::{
    fs::{self, File},
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use sluice_tests::process;

use crate::{
    cpu,
    rig::{Rig, AGENT, SSH_HOST, SSH_SERVICE},
    stats::{interleave, Better, Run, Table},
    tools, Mode,
};

pub const SYSTEMS: [&str; 2] = ["direct", "sluice"];

/// One MiB, the unit of the file size and of the CPU figure.
const MIB: u64 = 1 << 20;

/// Copies the file with `scp` on both systems, interleaved: the throughput,
/// and Sluice's CPU time per MiB copied.
pub fn run(rig: &mut Rig, mode: &Mode) -> Result<Vec<Table>> {
    let dir = rig.dir.path().join("scp");
    fs::create_dir_all(&dir)?;
    let payload = dir.join("payload");
    write_random(&payload, mode.scp_mib * MIB)?;
    let arrived = rig.sshd.dir().join("arrived");
    let port = rig.sshd.addr.port().to_string();
    let direct = Login::direct(rig, &dir)?;
    let agent = Login::agent(rig, &dir)?;
    // At least 20 MiB/s, and never less than a minute.
    let timeout = Duration::from_secs(60 + mode.scp_mib / 20);
    let argv = |login: &Login, host: &str| -> Vec<String> {
        let mut argv: Vec<String> = ["scp", "-q", "-F", "/dev/null"].map(String::from).to_vec();
        for option in [
            format!("UserKnownHostsFile={}", login.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "BatchMode=yes".into(),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
        ] {
            argv.extend(["-o".into(), option]);
        }
        argv.extend(["-i".into(), login.key.display().to_string()]);
        argv.extend(["-P".into(), port.clone()]);
        argv.push(payload.display().to_string());
        argv.push(format!("{}@{host}:{}", login.user, arrived.display()));
        argv
    };
    let direct_argv = argv(&direct, &rig.sshd.addr.ip().to_string());
    let agent_argv = tools::with_hosts(&rig.hosts, &argv(&agent, SSH_HOST));

    let command = format!(
        "scp -q -F /dev/null -o StrictHostKeyChecking=yes -i <real key or placeholder key> -P <port> <{} MiB file> <user>@<host>:<path>",
        mode.scp_mib
    );
    let mut rate = Table::new(
        "scp.rate",
        &format!(
            "SSH, OpenSSH scp of a {} MiB file up to sshd (SFTP protocol)",
            mode.scp_mib
        ),
        "MiB/s",
        Better::Higher,
        &command,
        &SYSTEMS,
    );
    let mut cpu = Table::new(
        "scp.cpu",
        "SSH, OpenSSH scp up to sshd: Sluice's CPU per MiB copied",
        "µs/MiB",
        Better::Lower,
        &command,
        &SYSTEMS[1..],
    );
    let mib = mode.scp_mib as f64;
    // One copy: the rate in MiB/s, checked on arrival and removed.
    let copy = |what: &str, run: &dyn Fn() -> Result<std::process::Output>| -> Result<(f64, f64)> {
        remove_if_there(&arrived)?;
        let t0 = Instant::now();
        let out = run()?;
        let secs = t0.elapsed().as_secs_f64();
        tools::stdout_of(what, &out)?;
        same_bytes(&payload, &arrived).with_context(|| format!("{what}: the copy on arrival"))?;
        remove_if_there(&arrived)?;
        Ok((mib / secs, mib))
    };
    let sluice_pid = rig.sluice_pid()?;
    {
        let sluice = &rig.sluice;
        let mut systems: Vec<(&str, Run<'_>)> = vec![
            (
                "direct",
                Box::new(|| {
                    let (rate, _) = copy("scp", &|| {
                        let mut cmd = Command::new(&direct_argv[0]);
                        cmd.args(&direct_argv[1..]);
                        process::output_with_timeout(&mut cmd, None, timeout)
                    })?;
                    Ok(vec![rate, f64::NAN])
                }),
            ),
            (
                "sluice",
                Box::new(|| {
                    let (rate, cpu) = cpu::per_request(&[sluice_pid], || {
                        copy("scp (agent)", &|| {
                            sluice.exec_with_timeout(AGENT, &agent_argv, timeout)
                        })
                    })?;
                    Ok(vec![rate, cpu])
                }),
            ),
        ];
        interleave(mode.rounds, &mut [&mut rate, &mut cpu], &mut systems)?;
    }
    fs::remove_file(&payload)?;
    rig.check_alive()?;
    Ok(vec![rate, cpu])
}

/// Who scp logs in as, with which key, trusting which host key.
struct Login {
    user: String,
    /// The private key file (0600).
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Login {
    /// The real user with the real key, trusting the sshd's host key.
    fn direct(rig: &Rig, dir: &Path) -> Result<Login> {
        let known_hosts = dir.join("known_hosts.direct");
        fs::write(
            &known_hosts,
            format!(
                "[{}]:{} {}\n",
                rig.sshd.addr.ip(),
                rig.sshd.addr.port(),
                rig.sshd.host_key.to_openssh()?
            ),
        )?;
        let key = dir.join("id_real");
        write_private(&key, &rig.sshd.user_key_pem())?;
        Ok(Login {
            user: rig.sshd.user.clone(),
            key,
            known_hosts,
        })
    }

    /// The agent with a placeholder key, trusting only Sluice's host key.
    fn agent(rig: &Rig, dir: &Path) -> Result<Login> {
        let known_hosts = dir.join("known_hosts.agent");
        fs::write(&known_hosts, rig.sluice.cli(&["ssh", "known-hosts"])?)?;
        let pem = rig.sluice.cli(&[
            "token",
            "issue",
            "--agent",
            AGENT,
            "--service",
            SSH_SERVICE,
            "--ssh-key",
            "--ttl",
            "6h",
        ])?;
        let key = dir.join("id_placeholder");
        write_private(&key, &pem)?;
        Ok(Login {
            user: "agent".into(),
            key,
            known_hosts,
        })
    }
}

/// Writes a private key file readable by its owner only (ssh refuses
/// others).
fn write_private(path: &Path, pem: &str) -> Result<()> {
    fs::write(path, pem).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Writes `len` bytes from `/dev/urandom` to `path`.
fn write_random(path: &Path, len: u64) -> Result<()> {
    let mut random = File::open("/dev/urandom")?.take(len);
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let written = std::io::copy(&mut random, &mut file)?;
    file.flush()?;
    if written != len {
        bail!(
            "wrote {written} of {len} random bytes to {}",
            path.display()
        );
    }
    Ok(())
}

/// Fails unless `b` holds exactly the bytes of `a`.
fn same_bytes(a: &Path, b: &Path) -> Result<()> {
    let (len_a, len_b) = (fs::metadata(a)?.len(), fs::metadata(b)?.len());
    if len_a != len_b {
        bail!("{} is {len_b} bytes, not {len_a}", b.display());
    }
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut offset = 0u64;
    while offset < len_a {
        let n = (len_a - offset).min(MIB) as usize;
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            bail!(
                "{} differs from {} in the MiB at offset {offset}",
                b.display(),
                a.display()
            );
        }
        offset += n as u64;
    }
    Ok(())
}

/// Removes `path` unless it is already gone.
fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}
