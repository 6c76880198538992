//! A rogue PostgreSQL server for one test: it listens where the real server
//! did (after [`crate::Postgres::stop`]), does not know the password, and
//! tries to get it or to fake a login. It records every byte it receives
//! (after TLS, in the clear) so a test can assert the password never came.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;
use base64::{engine::general_purpose::STANDARD as B64, Engine};

use crate::TestCa;

/// PostgreSQL's SSLRequest code (protocol §55.2.10).
const SSL_REQUEST: u32 = 80_877_103;
/// How long the rogue waits for the next bytes before it hangs up.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the rogue asks for after the StartupMessage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RogueAuth {
    /// `AuthenticationCleartextPassword`.
    Cleartext,
    /// `AuthenticationMD5Password`.
    Md5,
    /// SCRAM-SHA-256 up to the client's proof, then `AuthenticationOk`
    /// without the server signature.
    ScramThenOk,
    /// SCRAM-SHA-256 with a made-up server signature, then
    /// `AuthenticationOk`.
    ScramWrongSignature,
}

/// A running rogue server; stops accepting on drop.
pub struct RoguePostgres {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    after_request: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _ca_dir: tempfile::TempDir,
}

impl RoguePostgres {
    /// Listens on `addr`. With `tls` it accepts SSLRequest with a
    /// certificate for `host` from its own CA (which nobody trusts);
    /// without, it answers `N`.
    pub fn start(addr: SocketAddr, host: &str, tls: bool, auth: RogueAuth) -> Result<Self> {
        let ca_dir = tempfile::Builder::new()
            .prefix("sluice-rogue-ca-")
            .tempdir()?;
        let config = if tls {
            Some(TestCa::new(ca_dir.path())?.server_config(&[host], &[])?)
        } else {
            None
        };
        // The address was a stopped server's; a socket of another test may
        // hold its port for a moment (seen twice under a full suite), so the
        // bind is retried, bounded.
        let listener = crate::poll(
            "the stopped server's address to be free",
            Duration::from_secs(10),
            || TcpListener::bind(addr).ok(),
        )?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let after_request = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, a, s) = (received.clone(), after_request.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                let (r, a, config) = (r.clone(), a.clone(), config.clone());
                std::thread::spawn(move || {
                    let mut rogue = Session {
                        received: r,
                        after_request: a,
                        requested: false,
                    };
                    let _ = rogue.serve(tcp, config, auth);
                });
            }
        });
        Ok(RoguePostgres {
            addr,
            received,
            after_request,
            stop,
            thread: Some(thread),
            _ca_dir: ca_dir,
        })
    }

    /// Every byte received so far, from all connections.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// The bytes received after the rogue sent its authentication request:
    /// what a client answered it with.
    pub fn received_after_request(&self) -> Vec<u8> {
        self.after_request.lock().unwrap().clone()
    }
}

impl Drop for RoguePostgres {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Session {
    received: Arc<Mutex<Vec<u8>>>,
    after_request: Arc<Mutex<Vec<u8>>>,
    requested: bool,
}

impl Session {
    fn serve(
        &mut self,
        mut tcp: TcpStream,
        tls: Option<Arc<rustls::ServerConfig>>,
        auth: RogueAuth,
    ) -> io::Result<()> {
        tcp.set_read_timeout(Some(READ_TIMEOUT))?;
        let first = self.packet(&mut tcp)?;
        if first.len() != 4 || u32::from_be_bytes(first[..4].try_into().unwrap()) != SSL_REQUEST {
            return self.authenticate(&mut tcp, auth);
        }
        match tls {
            Some(config) => {
                tcp.write_all(b"S")?;
                let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                self.packet(&mut stream)?;
                self.authenticate(&mut stream, auth)
            }
            None => {
                tcp.write_all(b"N")?;
                self.packet(&mut tcp)?;
                self.authenticate(&mut tcp, auth)
            }
        }
    }

    /// Sends the authentication request, then plays `auth` out.
    fn authenticate<S: Read + Write>(&mut self, s: &mut S, auth: RogueAuth) -> io::Result<()> {
        match auth {
            RogueAuth::Cleartext => send_auth(s, 3, b"")?,
            RogueAuth::Md5 => send_auth(s, 5, b"salt")?,
            RogueAuth::ScramThenOk | RogueAuth::ScramWrongSignature => {
                send_auth(s, 10, b"SCRAM-SHA-256\0\0")?;
                self.requested = true;
                let initial = self.message(s)?;
                let text = String::from_utf8_lossy(&initial);
                let nonce = text
                    .split(',')
                    .find_map(|a| a.strip_prefix("r="))
                    .unwrap_or("x")
                    .to_string();
                let first = format!("r={nonce}rogue,s={},i=4096", B64.encode(b"rogue-salt"));
                send_auth(s, 11, first.as_bytes())?;
                self.message(s)?;
                if auth == RogueAuth::ScramWrongSignature {
                    send_auth(s, 12, format!("v={}", B64.encode([7u8; 32])).as_bytes())?;
                }
                send_auth(s, 0, b"")?;
                send(s, b'K', &[0, 0, 0, 42, 0, 0, 0, 7])?;
                send(s, b'Z', b"I")?;
            }
        }
        self.requested = true;
        // Whatever the client sends now, until it hangs up.
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => self.record(&buf[..n]),
            }
        }
    }

    fn record(&self, bytes: &[u8]) {
        self.received.lock().unwrap().extend_from_slice(bytes);
        if self.requested {
            self.after_request.lock().unwrap().extend_from_slice(bytes);
        }
    }

    fn read_exact<S: Read>(&self, s: &mut S, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf)?;
        self.record(&buf);
        Ok(buf)
    }

    /// A start-up packet (length, body; no tag); returns the body.
    fn packet<S: Read>(&self, s: &mut S) -> io::Result<Vec<u8>> {
        let len = self.read_exact(s, 4)?;
        let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
        self.read_exact(s, len.saturating_sub(4).min(1 << 16))
    }

    /// A tagged message; returns its SASL data (after the mechanism name
    /// and length for SASLInitialResponse), or the body.
    fn message<S: Read>(&self, s: &mut S) -> io::Result<Vec<u8>> {
        self.read_exact(s, 1)?;
        let body = self.packet(s)?;
        Ok(match body.iter().position(|b| *b == 0) {
            Some(nul) if body.len() > nul + 5 => body[nul + 5..].to_vec(),
            _ => body,
        })
    }
}

fn send_auth<S: Write>(s: &mut S, code: u32, extra: &[u8]) -> io::Result<()> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    send(s, b'R', &body)
}

fn send<S: Write>(s: &mut S, tag: u8, body: &[u8]) -> io::Result<()> {
    let mut msg = vec![tag];
    msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    msg.extend_from_slice(body);
    s.write_all(&msg)?;
    s.flush()
}
