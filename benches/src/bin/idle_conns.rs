//! `idle_conns --addr IP:PORT --sni NAME --ca PEM --token TOKEN --path PATH`:
//! holds idle HTTPS connections and measures a light request stream, driven
//! by commands on stdin, one per line, each answered by one line on stdout:
//!
//! - `open N`  → `open N SECONDS`: opens N connections (TLS, one
//!   `GET PATH` each, answered 200), 64 at a time, and keeps them idle;
//! - `probe COUNT RATE` → `probe P50_US P99_US MAX_US`: on a fresh
//!   keep-alive connection, COUNT requests at RATE per second, one at a time;
//! - `alive` → `alive N`: how many held connections the peer has not closed;
//! - `close` → `closed`: drops the held connections.
//!
//! Started first it prints `ready`. End of input ends it. It dials the
//! address as given (an agent's connections are redirected by Sluice's eBPF
//! programs) and raises its own open-files limit to the hard limit.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::Semaphore,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

/// Handshakes in flight while opening.
const CONCURRENCY: usize = 64;
/// How long one request may take before the run fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Client {
    addr: SocketAddr,
    sni: ServerName<'static>,
    connector: TlsConnector,
    request: Arc<Vec<u8>>,
}

type Conn = TlsStream<TcpStream>;

fn main() -> Result<()> {
    let mut opts = std::collections::HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().with_context(|| format!("{k} needs a value"))?;
        opts.insert(k.trim_start_matches("--").to_string(), v);
    }
    let get = |k: &str| {
        opts.get(k)
            .cloned()
            .with_context(|| format!("--{k} is required"))
    };
    let addr: SocketAddr = get("addr")?.parse().context("--addr IP:PORT")?;
    if !addr.ip().is_loopback() {
        bail!("--addr must be a loopback address");
    }
    let sni = ServerName::try_from(get("sni")?).context("--sni")?;
    let ca = PathBuf::from(get("ca")?);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nUser-Agent: sluice-bench-idle\r\n\r\n",
        get("path")?,
        get("sni")?,
        get("token")?
    );
    raise_nofile();
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(&ca).with_context(|| format!("read {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = Arc::new(Client {
        addr,
        sni,
        connector: TlsConnector::from(Arc::new(config)),
        request: Arc::new(request.into_bytes()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(client))
}

async fn serve(client: Arc<Client>) -> Result<()> {
    let mut held: Vec<Conn> = Vec::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    say("ready").await?;
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["open", n] => {
                let started = Instant::now();
                let n: usize = n.parse().context("open N")?;
                held.extend(open(&client, n).await?);
                say(&format!(
                    "open {} {:.3}",
                    held.len(),
                    started.elapsed().as_secs_f64()
                ))
                .await?;
            }
            ["probe", count, rate] => {
                let (count, rate): (usize, f64) = (count.parse()?, rate.parse()?);
                let mut lat = probe(&client, count, rate).await?;
                lat.sort_unstable();
                let pick =
                    |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1];
                say(&format!(
                    "probe {} {} {}",
                    pick(0.5),
                    pick(0.99),
                    lat[lat.len() - 1]
                ))
                .await?;
            }
            ["alive"] => {
                let mut alive = 0;
                for conn in &mut held {
                    let mut buf = [0u8; 1];
                    // Ready with 0 bytes (or an error) means the peer closed it.
                    match tokio::time::timeout(Duration::from_millis(1), conn.read(&mut buf)).await
                    {
                        Err(_) => alive += 1,
                        Ok(_) => {}
                    }
                }
                say(&format!("alive {alive}")).await?;
            }
            ["close"] => {
                held.clear();
                say("closed").await?;
            }
            _ => bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

async fn say(line: &str) -> Result<()> {
    let mut out = tokio::io::stdout();
    out.write_all(format!("{line}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// Opens `n` connections, each answering one request.
async fn open(client: &Arc<Client>, n: usize) -> Result<Vec<Conn>> {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, permits) = (client.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut conn = connect(&client).await?;
            request(&client, &mut conn).await?;
            anyhow::Ok(conn)
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    Ok(conns)
}

async fn connect(client: &Client) -> Result<Conn> {
    let tcp = TcpStream::connect(client.addr)
        .await
        .with_context(|| format!("connect {}", client.addr))?;
    tcp.set_nodelay(true)?;
    Ok(client
        .connector
        .connect(client.sni.clone(), tcp)
        .await
        .context("TLS handshake")?)
}

/// `count` requests at `rate` per second on one fresh connection:
/// latencies in µs.
async fn probe(client: &Client, count: usize, rate: f64) -> Result<Vec<u64>> {
    let mut conn = connect(client).await?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        ticker.tick().await;
        let started = Instant::now();
        request(client, &mut conn).await?;
        lat.push(started.elapsed().as_micros() as u64);
    }
    Ok(lat)
}

/// One request; fails unless the answer is 200. Reads exactly the answer
/// (`Content-Length` framing), so the connection stays usable.
async fn request(client: &Client, conn: &mut Conn) -> Result<()> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        conn.write_all(&client.request).await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the answer's head");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        if !head.starts_with("HTTP/1.1 200") {
            bail!("answer was not 200: {}", head.lines().next().unwrap_or(""));
        }
        let header = |name: &str| {
            head.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        // Content-Length framing, else chunked (RFC 9112 §6.3): read to the
        // last chunk.
        let done = |buf: &[u8]| match header("content-length") {
            Some(len) => len
                .parse::<usize>()
                .map(|len| buf.len() >= head_end + len)
                .unwrap_or(true),
            None => buf[head_end..].ends_with(b"0\r\n\r\n"),
        };
        if header("content-length").is_none()
            && !header("transfer-encoding").is_some_and(|v| v.contains("chunked"))
        {
            bail!("answer has neither Content-Length nor chunked framing");
        }
        while !done(&buf) {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside the body");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await
    .context("request timed out")?
}

/// Sets the soft open-files limit to the hard one.
fn raise_nofile() {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
