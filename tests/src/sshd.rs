//! A private OpenSSH server for one test: Debian's `/usr/sbin/sshd` run in
//! the foreground (`-D`) from a temp dir with its own config, host key,
//! authorized key and log, on one `127.0.x.y` address and a free port,
//! stopped by PID on drop. Never the system sshd.
use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use russh::keys::{PrivateKey, PublicKey};

/// The server binary (Debian package `openssh-server`).
pub const SSHD: &str = "/usr/sbin/sshd";
/// How long sshd may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running sshd.
pub struct Sshd {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its host public key (what `upstream_host_key` must say).
    pub host_key: PublicKey,
    /// The test user's name (the user running the tests, root under
    /// `cargo xtask test`).
    pub user: String,
    user_key: UserKey,
    dir: tempfile::TempDir,
    child: Child,
}

impl Sshd {
    /// Starts sshd on `ip` with a fresh host key and a fresh authorized
    /// user key of kind `user_key`, logging at DEBUG1 (every
    /// `userauth-request`) to `sshd.log` in its dir.
    pub fn start(ip: IpAddr, user_key: UserKey) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("sluice-sshd-")
            .tempdir()
            .unwrap();
        let host =
            PrivateKey::from_openssh(keygen(dir.path(), "host_key", &["-t", "ed25519"])).unwrap();
        // ssh-key (russh's key parser) rejects a P-256 private scalar with a
        // leading zero byte, encoded in 31 bytes (1 key in 256; RustCrypto/SSH
        // ssh-key 0.7.0-rc.11, `EcdsaPrivateKey::decode` MIN_SIZE): such a
        // key would fail to load as a vault secret, so draw another.
        while sluice_ssh::upstream::parse_private_key(&keygen(
            dir.path(),
            user_key.file(),
            user_key.keygen_args(),
        ))
        .is_err()
        {
            fs::remove_file(dir.path().join(user_key.file())).unwrap();
            fs::remove_file(dir.path().join(format!("{}.pub", user_key.file()))).unwrap();
        }
        fs::copy(
            dir.path().join(format!("{}.pub", user_key.file())),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        // sshd refuses to start without its privilege separation directory,
        // which the package's tmpfiles.d entry creates at boot.
        fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port(ip);
        let addr = SocketAddr::new(ip, port);
        let d = dir.path().display();
        let config = format!(
            "ListenAddress {addr}\n\
             HostKey {d}/host_key\n\
             PidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             UseDNS no\n\
             AcceptEnv *\n\
             AllowTcpForwarding yes\n\
             AllowAgentForwarding yes\n\
             X11Forwarding no\n\
             Subsystem sftp internal-sftp\n\
             LogLevel DEBUG1\n"
        );
        fs::write(dir.path().join("sshd_config"), config).unwrap();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(dir.path().join("sshd_config"))
            .arg("-E")
            .arg(dir.path().join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd (apt-get install openssh-server)");
        let sshd = Sshd {
            addr,
            host_key: host.public_key().clone(),
            user: current_user(),
            user_key,
            dir,
            child,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {addr}: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The temp dir (for repositories and files the test user touches).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The private key it accepts for the test user (the real key, the
    /// vault secret), in OpenSSH format.
    pub fn user_key_pem(&self) -> String {
        fs::read_to_string(self.dir.path().join(self.user_key.file())).unwrap()
    }
}

/// The kinds of user key the server can authorize.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UserKey {
    #[default]
    Ed25519,
    /// ECDSA on NIST P-256.
    Ecdsa,
    /// RSA, 3072 bits (signed with rsa-sha2-512/256, RFC 8332).
    Rsa,
}

impl UserKey {
    fn file(self) -> &'static str {
        match self {
            UserKey::Ed25519 => "user_ed25519",
            UserKey::Ecdsa => "user_ecdsa",
            UserKey::Rsa => "user_rsa",
        }
    }

    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            UserKey::Ed25519 => &["-t", "ed25519"],
            UserKey::Ecdsa => &["-t", "ecdsa", "-b", "256"],
            UserKey::Rsa => &["-t", "rsa", "-b", "3072"],
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The child we spawned, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a key pair `dir/name`, `dir/name.pub` with `ssh-keygen args`
/// and returns the private key file's text.
fn keygen(dir: &Path, name: &str, args: &[&str]) -> String {
    let path: PathBuf = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name])
        .args(args)
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(status.success(), "ssh-keygen failed");
    fs::read_to_string(&path).unwrap()
}

/// A port free on `ip` right now.
pub fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The name of the user running the tests.
fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A bare repository `dir/repo.git` with one commit (a `README` reading
/// "cloned through sluice"), made from `dir/src`; returns its path.
pub fn bare_repo(dir: &Path) -> PathBuf {
    let git = |args: &[&str]| {
        let st = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@test",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .status()
            .expect("git (apt-get install git)");
        assert!(st.success(), "git {args:?}");
    };
    let src = dir.join("src");
    git(&["init", "-q", src.to_str().unwrap()]);
    fs::write(src.join("README"), "cloned through sluice\n").unwrap();
    git(&["-C", src.to_str().unwrap(), "add", "README"]);
    git(&["-C", src.to_str().unwrap(), "commit", "-q", "-m", "first"]);
    let bare = dir.join("repo.git");
    git(&[
        "clone",
        "-q",
        "--bare",
        src.to_str().unwrap(),
        bare.to_str().unwrap(),
    ]);
    bare
}

/// Asserts that no line of the private key `key_pem` appears in any of
/// `texts` (label, content), naming the label on a hit, never the line.
/// Lines every unencrypted ed25519 key shares (the `openssh-key-v1`
/// header) are skipped: placeholder keys have them too.
pub fn assert_no_private_key(key_pem: &str, texts: &[(String, String)]) {
    let any_key = sluice_ssh::placeholder::PlaceholderKey::generate("any").unwrap();
    let shared: Vec<&str> = any_key.private_pem.lines().collect();
    let mut lines = key_pem
        .lines()
        .filter(|l| l.len() >= 16 && !l.starts_with("-----") && !shared.contains(l))
        .peekable();
    assert!(lines.peek().is_some(), "the private key has body lines");
    for line in lines {
        for (label, text) in texts {
            assert!(
                !text.contains(line),
                "a line of the private key appears in {label}"
            );
        }
    }
}
