//! Network namespaces: the cookie of Sluice's own, which the eBPF programs
//! compare with each connecting socket's (`bpf_get_netns_cookie`) to tell a
//! container's connection from one made on the host (DESIGN.md §8).
//!
//! The cookie is read with `getsockopt(SO_NETNS_COOKIE)` on any socket of
//! the namespace, socket(7). Kernel ≥ 5.14 for the socket option (the eBPF
//! helper needs ≥ 5.7 in `cgroup/connect*`).
use std::{io, os::fd::AsRawFd};

/// `SO_NETNS_COOKIE` from `<asm-generic/socket.h>` (71 on every
/// architecture Sluice builds for; not exported by the `libc` crate).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The network namespace cookie of the namespace `socket` was made in.
///
/// # Errors
/// `ENOPROTOOPT` on kernels older than 5.14.
pub fn cookie_of(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes and `len` holds the
    // size of `cookie`; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_of_one_namespace_share_a_nonzero_cookie() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cookie = cookie_of(&a).unwrap();
        assert_ne!(cookie, 0);
        assert_eq!(cookie, cookie_of(&b).unwrap());
    }
}
