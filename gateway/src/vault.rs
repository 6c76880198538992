//! The sealed secret store: `state_dir/vault.sealed`.
//!
//! File format: `b"SLV1"` (magic and version) ‖ 24-byte random nonce ‖
//! XChaCha20-Poly1305 AEAD ciphertext (with tag) of a JSON object mapping
//! secret names to base64 values. The AAD is the magic. A fresh nonce is
//! drawn from the OS RNG on every write.
//!
//! The 32-byte key is read from `$CREDENTIALS_DIRECTORY/vault.key` (systemd
//! `LoadCredential=`) when that file exists, else from `gateway.vault_key`.
//! A missing key file is created (mode 0600, parent 0700) unless a sealed
//! vault already exists, which a new key could not open. A key file readable
//! by group or others is refused.
//!
//! Writers serialise on an exclusive `flock(2)` of `state_dir/vault.lock`
//! and replace the file atomically (temp file, fsync, rename, fsync of the
//! directory), so readers never see a torn vault and need no lock.
//! [`VaultCache`] lets the daemon pick up `sluice secret put` without a
//! restart.
//!
//! Plaintext (key, JSON, values) lives only in buffers that are zeroized on
//! drop; no error message or `Debug` output contains a secret value.
use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use chacha20poly1305::{
    aead::{AeadInPlace, KeyInit},
    Key, XChaCha20Poly1305, XNonce,
};
use nix::fcntl::{Flock, FlockArg};
use rand::{rngs::OsRng, RngCore};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::config::Gateway;

/// Magic and format version at the start of `vault.sealed`; also the AAD.
const MAGIC: &[u8; 4] = b"SLV1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Length of the vault key in bytes.
pub const KEY_LEN: usize = 32;
const SEALED_FILE: &str = "vault.sealed";
const LOCK_FILE: &str = "vault.lock";

/// A secret value. Its buffer is wiped on drop; `Debug` and `Display` print
/// `[redacted]`.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// The raw value. Callers must not log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Inside the sealed JSON a value is a base64 string.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Zeroizing::new(BASE64.encode(self.expose())))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Base64Visitor;
        impl de::Visitor<'_> for Base64Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            // Base64 needs no JSON escapes, so serde_json lends the str from
            // the (zeroized) plaintext buffer without copying it.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                let mut out = Zeroizing::new(Vec::with_capacity(v.len() / 4 * 3 + 3));
                BASE64
                    .decode_vec(v, &mut out)
                    .map_err(|_| E::custom("invalid base64 value"))?;
                Ok(Secret(out))
            }
        }
        d.deserialize_str(Base64Visitor)
    }
}

type SecretMap = BTreeMap<String, Secret>;

/// A vault failure. Messages name the file and what to do; never a value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault key {} is readable by group or others (mode {mode:03o}); run `chmod 600 {}`", path.display(), path.display())]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("vault key {} holds {len} bytes, expected exactly {KEY_LEN} random bytes; restore the right key file", path.display())]
    KeyLength { path: PathBuf, len: u64 },
    #[error("vault key {} is missing but {} exists; restore the key it was sealed with (a new key cannot open it)", key.display(), sealed.display())]
    KeyLost { key: PathBuf, sealed: PathBuf },
    #[error("cannot decrypt {} with key {}: wrong key or tampered file; use the key the vault was sealed with", sealed.display(), key.display())]
    Decrypt { sealed: PathBuf, key: PathBuf },
    #[error("{} is not a readable Sluice vault ({reason}); restore it from a backup", path.display())]
    Corrupt { path: PathBuf, reason: &'static str },
    #[error("invalid secret name {0:?}: use 1-128 letters, digits, '-', '_' or '.'")]
    InvalidName(String),
    #[error("cannot {action} {}: {source}{}", path.display(), permission_hint(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn permission_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        " (run as root, or as the user that owns the vault)"
    } else {
        ""
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VaultError + 'a {
    move |source| VaultError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// An opened vault: the key plus the paths of its files.
pub struct Vault {
    cipher: XChaCha20Poly1305,
    key_path: PathBuf,
    key_created: bool,
    dir: PathBuf,
    sealed: PathBuf,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("key_path", &self.key_path)
            .field("sealed", &self.sealed)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Opens the vault of `gw.state_dir` with the key from
    /// `$CREDENTIALS_DIRECTORY/vault.key` or `gw.vault_key`, creating the key
    /// file if it is missing and no sealed vault exists yet. Reads nothing
    /// else; a missing `vault.sealed` is an empty vault.
    ///
    /// # Errors
    /// [`VaultError::KeyPermissions`], [`VaultError::KeyLength`],
    /// [`VaultError::KeyLost`], or [`VaultError::Io`] reading or creating
    /// the key.
    pub fn open(gw: &Gateway) -> Result<Vault, VaultError> {
        let key_path = key_path(gw, std::env::var_os("CREDENTIALS_DIRECTORY"));
        let sealed = gw.state_dir.join(SEALED_FILE);
        let (key, key_created) = match read_key(&key_path)? {
            Some(key) => (key, false),
            None if sealed.exists() => {
                return Err(VaultError::KeyLost {
                    key: key_path,
                    sealed,
                })
            }
            None => match create_key(&key_path)? {
                Some(key) => {
                    tracing::info!(path = %key_path.display(), "created a new vault key; back it up");
                    (key, true)
                }
                // Another process created it first: use theirs.
                None => (
                    read_key(&key_path)?.ok_or_else(|| {
                        io_err("read vault key", &key_path)(io::ErrorKind::NotFound.into())
                    })?,
                    false,
                ),
            },
        };
        Ok(Vault {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key[..])),
            key_path,
            key_created,
            dir: gw.state_dir.clone(),
            sealed,
        })
    }

    /// The key file in use, if [`Vault::open`] just created it (so the CLI
    /// can tell the admin to back it up).
    pub fn key_created(&self) -> Option<&Path> {
        self.key_created.then_some(self.key_path.as_path())
    }

    /// Stores `value` under `name`, replacing any previous value.
    ///
    /// # Errors
    /// [`VaultError::InvalidName`], or any error of reading or writing the
    /// sealed file.
    pub fn put(&self, name: &str, value: &[u8]) -> Result<(), VaultError> {
        check_name(name)?;
        self.update(|map| {
            map.insert(name.to_string(), Secret(Zeroizing::new(value.to_vec())));
            true
        })
        .map(drop)
    }

    /// Removes `name`; `Ok(false)` when there is no such secret.
    ///
    /// # Errors
    /// Any error of reading or writing the sealed file.
    pub fn remove(&self, name: &str) -> Result<bool, VaultError> {
        self.update(|map| map.remove(name).is_some())
    }

    /// Secret names, sorted.
    ///
    /// # Errors
    /// Any error of reading the sealed file.
    pub fn names(&self) -> Result<Vec<String>, VaultError> {
        Ok(self.load()?.1.into_keys().collect())
    }

    /// The value of `name`, or `None`.
    ///
    /// # Errors
    /// Any error of reading the sealed file.
    pub fn get(&self, name: &str) -> Result<Option<Secret>, VaultError> {
        Ok(self.load()?.1.remove(name))
    }

    /// Reads and decrypts the sealed file, with the identity of the file
    /// read (`None` when it does not exist: an empty vault).
    fn load(&self) -> Result<(Option<FileStamp>, SecretMap), VaultError> {
        let mut file = match File::open(&self.sealed) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, SecretMap::new())),
            Err(e) => return Err(io_err("read", &self.sealed)(e)),
        };
        let meta = file.metadata().map_err(io_err("read", &self.sealed))?;
        let mut sealed = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut sealed)
            .map_err(io_err("read", &self.sealed))?;
        Ok((Some(FileStamp::of(&meta)), self.unseal(&sealed)?))
    }

    fn unseal(&self, sealed: &[u8]) -> Result<SecretMap, VaultError> {
        let corrupt = |reason| VaultError::Corrupt {
            path: self.sealed.clone(),
            reason,
        };
        let rest = sealed
            .strip_prefix(MAGIC)
            .ok_or_else(|| corrupt("bad magic, expected SLV1"))?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt("truncated"));
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        self.cipher
            .decrypt_in_place(XNonce::from_slice(nonce), MAGIC, &mut *plain)
            .map_err(|_| VaultError::Decrypt {
                sealed: self.sealed.clone(),
                key: self.key_path.clone(),
            })?;
        serde_json::from_slice(&plain)
            .map_err(|_| corrupt("decrypted contents are not a secret map"))
    }

    fn seal(&self, map: &SecretMap) -> Result<Vec<u8>, VaultError> {
        // Serialise once to size the buffer exactly, so the plaintext is
        // never reallocated (which would leave unwiped copies behind).
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, map).expect("serialising to a counter cannot fail");
        let mut plain = Zeroizing::new(Vec::with_capacity(counter.0 + TAG_LEN));
        serde_json::to_writer(&mut *plain, map).expect("serialising to memory cannot fail");
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        self.cipher
            .encrypt_in_place(XNonce::from_slice(&nonce), MAGIC, &mut *plain)
            .map_err(|_| VaultError::Corrupt {
                path: self.sealed.clone(),
                reason: "vault too large to seal",
            })?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + plain.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&plain);
        Ok(out)
    }

    /// Read-modify-write under the vault lock. `change` returns whether it
    /// changed the map; only then is the file rewritten.
    fn update(&self, change: impl FnOnce(&mut SecretMap) -> bool) -> Result<bool, VaultError> {
        create_private_dir(&self.dir)?;
        let lock_path = self.dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open lock file", &lock_path))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("lock", &lock_path)(errno.into()))?;
        let mut map = self.load()?.1;
        if !change(&mut map) {
            return Ok(false);
        }
        let sealed = self.seal(&map)?;
        self.replace(&sealed)?;
        Ok(true)
    }

    /// Atomically replaces `vault.sealed` with `contents`.
    fn replace(&self, contents: &[u8]) -> Result<(), VaultError> {
        let tmp = self.dir.join(format!(
            ".{SEALED_FILE}.tmp-{}-{:08x}",
            std::process::id(),
            OsRng.next_u32()
        ));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(contents)?;
            f.sync_all()
        })();
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &self.sealed)) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write", &self.sealed)(e));
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory", &self.dir))
    }
}

/// Counts bytes written, to size a buffer before serialising into it.
struct ByteCounter(usize);

impl Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks a secret name: 1-128 ASCII letters, digits, `-`, `_` or `.`.
///
/// # Errors
/// [`VaultError::InvalidName`].
pub fn check_name(name: &str) -> Result<(), VaultError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidName(name.to_string()))
    }
}

/// `$CREDENTIALS_DIRECTORY/vault.key` when it exists, else `gw.vault_key`.
fn key_path(gw: &Gateway, credentials_directory: Option<std::ffi::OsString>) -> PathBuf {
    credentials_directory
        .map(|dir| Path::new(&dir).join("vault.key"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| gw.vault_key.clone())
}

/// A 32-byte key for another purpose, derived from the vault key as
/// HMAC-SHA256(vault key, `label`), so the vault key itself is never used
/// outside the vault. Reads the key like [`Vault::open`] but never creates
/// it.
///
/// # Errors
/// As reading the key in [`Vault::open`]; [`VaultError::Io`] (not found)
/// when there is no key file.
pub fn derive_key(gw: &Gateway, label: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    use hmac::{Hmac, Mac};
    let path = key_path(gw, std::env::var_os("CREDENTIALS_DIRECTORY"));
    let key = read_key(&path)?
        .ok_or_else(|| io_err("read vault key", &path)(io::ErrorKind::NotFound.into()))?;
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key[..]).expect("HMAC takes any key");
    mac.update(label);
    Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
}

/// Reads the key at `path`; `None` when the file does not exist.
fn read_key(path: &Path) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>, VaultError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read vault key", path)(e)),
    };
    let meta = file.metadata().map_err(io_err("read vault key", path))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(VaultError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(VaultError::KeyLength {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    file.read_exact(&mut key[..])
        .map_err(io_err("read vault key", path))?;
    Ok(Some(key))
}

/// Creates a fresh random key file at `path` (0600; parent directories
/// 0700). `None` if the file appeared meanwhile.
fn create_key(path: &Path) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>, VaultError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(&mut key[..]);
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(io_err("create vault key", path)(e)),
    };
    file.write_all(&key[..])
        .and_then(|()| file.sync_all())
        .map_err(io_err("write vault key", path))?;
    Ok(Some(key))
}

fn create_private_dir(dir: &Path) -> Result<(), VaultError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// Identity of one version of `vault.sealed`: every write renames a new
/// file into place, so the inode changes; size and mtime guard the rest.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(m: &fs::Metadata) -> Self {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

/// The daemon's view of the vault: decrypted once, re-read only when
/// `vault.sealed` changed (one `stat(2)` per [`VaultCache::get`]), so
/// `sluice secret put` takes effect without a restart. Thread-safe.
pub struct VaultCache {
    vault: Vault,
    loaded: Mutex<Option<(Option<FileStamp>, SecretMap)>>,
}

impl VaultCache {
    /// Wraps `vault`; nothing is read until the first [`VaultCache::get`].
    pub fn new(vault: Vault) -> Self {
        VaultCache {
            vault,
            loaded: Mutex::new(None),
        }
    }

    /// The current value of `name`, or `None`.
    ///
    /// # Errors
    /// Any error of reading the sealed file when it changed; the old
    /// contents are then dropped rather than served stale.
    pub fn get(&self, name: &str) -> Result<Option<Secret>, VaultError> {
        let current = match fs::metadata(&self.vault.sealed) {
            Ok(m) => Some(FileStamp::of(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read", &self.vault.sealed)(e)),
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(&*loaded, Some((stamp, _)) if *stamp == current) {
            *loaded = None;
            *loaded = Some(self.vault.load()?);
        }
        Ok(loaded.as_ref().and_then(|(_, map)| map.get(name).cloned()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn gateway(dir: &Path) -> Gateway {
        let text = format!(
            "state_dir = {:?}\nvault_key = {:?}\n",
            dir.join("state"),
            dir.join("etc/vault.key")
        );
        toml::from_str(&text).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn put_get_list_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let vault = Vault::open(&gw).unwrap();
        assert_eq!(vault.key_created(), Some(gw.vault_key.as_path()));
        assert_eq!(mode(&gw.vault_key), 0o600);
        assert_eq!(mode(gw.vault_key.parent().unwrap()), 0o700);
        assert!(vault.names().unwrap().is_empty());

        vault.put("payments-key", b"sk_live_123").unwrap();
        vault.put("billing-db", &[0, 255, 10]).unwrap();
        let reopened = Vault::open(&gw).unwrap();
        assert_eq!(reopened.key_created(), None);
        assert_eq!(reopened.names().unwrap(), ["billing-db", "payments-key"]);
        assert_eq!(
            reopened.get("payments-key").unwrap().unwrap().expose(),
            b"sk_live_123"
        );
        assert_eq!(
            reopened.get("billing-db").unwrap().unwrap().expose(),
            [0, 255, 10]
        );
        assert!(reopened.get("nope").unwrap().is_none());

        assert!(reopened.remove("billing-db").unwrap());
        assert!(!reopened.remove("billing-db").unwrap());
        assert_eq!(vault.names().unwrap(), ["payments-key"]);
        assert_eq!(mode(&gw.state_dir.join(SEALED_FILE)), 0o600);
    }

    #[test]
    fn sealed_file_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        Vault::open(&gw)
            .unwrap()
            .put("api", b"hunter2-hunter2")
            .unwrap();
        let raw = fs::read(gw.state_dir.join(SEALED_FILE)).unwrap();
        assert!(raw.starts_with(MAGIC));
        let hay = String::from_utf8_lossy(&raw);
        assert!(
            !hay.contains("hunter2")
                && !hay.contains("api")
                && !hay.contains(&BASE64.encode("hunter2-hunter2"))
        );
    }

    #[test]
    fn wrong_key_fails_with_a_clear_error_and_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        Vault::open(&gw).unwrap().put("api", b"hunter2").unwrap();
        fs::write(&gw.vault_key, [7u8; KEY_LEN]).unwrap();
        let e = Vault::open(&gw).unwrap().names().unwrap_err();
        assert!(matches!(e, VaultError::Decrypt { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("wrong key") && msg.contains("vault.sealed") && !msg.contains("hunter2"),
            "{msg}"
        );
    }

    #[test]
    fn missing_key_with_existing_vault_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        Vault::open(&gw).unwrap().put("api", b"v").unwrap();
        fs::remove_file(&gw.vault_key).unwrap();
        assert!(matches!(
            Vault::open(&gw).unwrap_err(),
            VaultError::KeyLost { .. }
        ));
        assert!(!gw.vault_key.exists());
    }

    #[test]
    fn key_readable_by_others_or_of_wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        Vault::open(&gw).unwrap();
        fs::set_permissions(&gw.vault_key, fs::Permissions::from_mode(0o644)).unwrap();
        let msg = Vault::open(&gw).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", gw.vault_key.display())),
            "{msg}"
        );

        fs::set_permissions(&gw.vault_key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&gw.vault_key, b"too short").unwrap();
        let msg = Vault::open(&gw).unwrap_err().to_string();
        assert!(
            msg.contains("9 bytes") && msg.contains("exactly 32"),
            "{msg}"
        );
    }

    #[test]
    fn credentials_directory_key_wins_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let creds = dir.path().join("creds");
        assert_eq!(
            key_path(&gw, Some(creds.clone().into_os_string())),
            gw.vault_key
        );
        fs::create_dir(&creds).unwrap();
        fs::write(creds.join("vault.key"), [1u8; KEY_LEN]).unwrap();
        assert_eq!(
            key_path(&gw, Some(creds.clone().into_os_string())),
            creds.join("vault.key")
        );
        assert_eq!(key_path(&gw, None), gw.vault_key);
    }

    #[test]
    fn writes_replace_atomically_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let vault = Vault::open(&gw).unwrap();
        let sealed = gw.state_dir.join(SEALED_FILE);
        vault.put("a", b"1").unwrap();
        let before = fs::metadata(&sealed).unwrap().ino();
        vault.put("a", b"2").unwrap();
        assert_ne!(
            fs::metadata(&sealed).unwrap().ino(),
            before,
            "replaced by rename, not rewritten in place"
        );
        let mut entries: Vec<_> = fs::read_dir(&gw.state_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        assert_eq!(entries, [LOCK_FILE, SEALED_FILE]);
    }

    #[test]
    fn concurrent_writers_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        Vault::open(&gw).unwrap();
        std::thread::scope(|s| {
            for i in 0..8 {
                let gw = &gw;
                s.spawn(move || {
                    Vault::open(gw)
                        .unwrap()
                        .put(&format!("s{i}"), b"x")
                        .unwrap()
                });
            }
        });
        assert_eq!(Vault::open(&gw).unwrap().names().unwrap().len(), 8);
    }

    #[test]
    fn secret_and_errors_never_print_values() {
        let s = Secret(Zeroizing::new(b"hunter2".to_vec()));
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(matches!(
            check_name("bad name"),
            Err(VaultError::InvalidName(_))
        ));
    }

    #[test]
    fn cache_sees_a_put_without_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let gw = gateway(dir.path());
        let cache = VaultCache::new(Vault::open(&gw).unwrap());
        assert!(cache.get("api").unwrap().is_none());
        let cli = Vault::open(&gw).unwrap();
        cli.put("api", b"one").unwrap();
        assert_eq!(cache.get("api").unwrap().unwrap().expose(), b"one");
        cli.put("api", b"two").unwrap();
        assert_eq!(cache.get("api").unwrap().unwrap().expose(), b"two");
        cli.remove("api").unwrap();
        assert!(cache.get("api").unwrap().is_none());
    }

    #[test]
    fn cache_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<VaultCache>();
    }
}
