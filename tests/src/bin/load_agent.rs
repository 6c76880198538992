//! Many concurrent agents in one process, for the load test (issue 8):
//! each agent keeps an HTTPS connection alive and sends requests with its
//! token, and every few requests also logs in to PostgreSQL with its token
//! (tokio-postgres, SCRAM) and runs a query. Run it inside the agent cgroup
//! (`sluice exec`); it prints one JSON summary at the end.
//!
//! ```text
//! load_agent AGENTS SECS CA_PEM HTTPS_IP:PORT HOST TOKEN PG_CONNINFO PG_CONCURRENCY
//! ```
//! PostgreSQL logins are limited to PG_CONCURRENCY at a time: the upstream
//! server's own `max_connections` is small.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_postgres::NoTls;

#[derive(Default)]
struct Stats {
    http_ok: AtomicU64,
    pg_ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
    }
}

struct Plan {
    deadline: Instant,
    tls: tokio_rustls::TlsConnector,
    https: SocketAddr,
    host: String,
    token: String,
    conninfo: String,
    pg_slots: tokio::sync::Semaphore,
    stats: Stats,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(plan: &Plan) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(plan.https)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name =
        rustls_pki_types::ServerName::try_from(plan.host.clone()).map_err(|e| e.to_string())?;
    let tls = plan
        .tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn http_once(plan: &Plan, sender: &mut Option<Sender>, n: u64) -> Result<(), String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(connect(plan).await?);
    }
    let s = sender.as_mut().unwrap();
    s.ready().await.map_err(|e| format!("ready: {e}"))?;
    let req = hyper::Request::get(format!("/v1/load/{n}"))
        .header("host", &plan.host)
        .header("authorization", format!("Bearer {}", plan.token))
        .body(Empty::new())
        .unwrap();
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!("http status {status}"))
    }
}

/// One PostgreSQL login and query; `Ok(false)` when no login slot freed
/// up before the deadline (not an error: the run is over).
async fn pg_once(plan: &Plan) -> Result<bool, String> {
    let deadline = tokio::time::Instant::from_std(plan.deadline);
    let Ok(slot) = tokio::time::timeout_at(deadline, plan.pg_slots.acquire()).await else {
        return Ok(false);
    };
    let _slot = slot.unwrap();
    let (client, conn) = tokio_postgres::connect(&plan.conninfo, NoTls)
        .await
        .map_err(|e| {
            format!(
                "pg connect: {}",
                e.as_db_error()
                    .map(|d| d.code().code().to_string())
                    .unwrap_or(e.to_string())
            )
        })?;
    let task = tokio::spawn(conn);
    let row = client
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .map_err(|e| format!("pg query: {e}"))?;
    let n: i64 = row.get(0);
    drop(client);
    let _ = task.await;
    if n == 3 {
        Ok(true)
    } else {
        Err(format!("pg count {n}"))
    }
}

async fn agent(plan: Arc<Plan>, id: u64) {
    let mut sender = None;
    let mut n = 0u64;
    while Instant::now() < plan.deadline {
        match http_once(&plan, &mut sender, id * 1_000_000 + n).await {
            Ok(()) => {
                plan.stats.http_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                plan.stats.error(e);
                sender = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if n % 20 == (id % 20) {
            match pg_once(&plan).await {
                Ok(true) => {
                    plan.stats.pg_ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => plan.stats.error(e),
            }
        }
        n += 1;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [agents, secs, ca, https, host, token, conninfo, pg_concurrency] = &args[..] else {
        eprintln!("usage: load_agent AGENTS SECS CA_PEM HTTPS_IP:PORT HOST TOKEN PG_CONNINFO PG_CONCURRENCY");
        std::process::exit(2);
    };
    let agents: u64 = agents.parse().expect("AGENTS");
    let secs: f64 = secs.parse().expect("SECS");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read CA");
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let plan = Arc::new(Plan {
        deadline: Instant::now() + Duration::from_secs_f64(secs),
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        https: https.parse().expect("HTTPS_IP:PORT"),
        host: host.clone(),
        token: token.clone(),
        conninfo: conninfo.clone(),
        pg_slots: tokio::sync::Semaphore::new(pg_concurrency.parse().expect("PG_CONCURRENCY")),
        stats: Stats::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..agents)
            .map(|id| tokio::spawn(agent(plan.clone(), id)))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let errors = plan.stats.errors.lock().unwrap().clone();
    println!(
        "{}",
        json!({
            "agents": agents,
            "secs": started.elapsed().as_secs_f64(),
            "http_ok": plan.stats.http_ok.load(Ordering::Relaxed),
            "pg_ok": plan.stats.pg_ok.load(Ordering::Relaxed),
            "errors": errors,
        })
    );
}
