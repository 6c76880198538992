//! Telling systemd we are ready (sd_notify(3), `Type=notify`).
use tracing::warn;

/// Sends `READY=1` to `$NOTIFY_SOCKET` when set (a path, or `@name` for an
/// abstract socket). Failures are logged, never fatal.
pub fn ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return warn!(error = %e, "sd_notify socket"),
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(b"READY=1\n", &addr))
    } else {
        sock.send_to(b"READY=1\n", std::path::Path::new(&path))
    };
    if let Err(e) = result {
        warn!(error = %e, "sd_notify READY=1 failed");
    }
}
