//! `talkie-mock-agent`: a real HTTP/1.1 server speaking the agent contract,
//! with fault injection. It deduplicates by `Idempotency-Key` (a repeat of
//! a delivered id gets 409) and records every request as a JSON line, so
//! tests and the benchmark can count what arrived and how often.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use talkie_agent_api::{UtterancePayload, IDEMPOTENCY_KEY, UTTERANCES_PATH};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Most ids remembered for deduplication.
const MAX_IDS: usize = 1_000_000;

/// Options of `talkie-mock-agent`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "talkie-mock-agent",
    about = "A fault-injecting agent for talkie's tests, demo and benchmarks"
)]
pub struct MockArgs {
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Share of requests answered with `--status` instead of success.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// The first N requests are answered with `--status`.
    #[arg(long, default_value_t = 0)]
    pub fail_first: u64,
    /// Status of failed requests.
    #[arg(long, default_value_t = 503)]
    pub status: u16,
    /// `Retry-After` seconds sent with failed requests.
    #[arg(long)]
    pub retry_after: Option<u64>,
    /// Wait this long before answering.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Only the first N requests are delayed (0 = all).
    #[arg(long, default_value_t = 0)]
    pub slow_first: u64,
    /// Share of requests whose connection is closed without an answer
    /// (after the request was taken: the agent has it, the device does not know).
    #[arg(long, default_value_t = 0.0)]
    pub drop_connection_rate: f64,
    /// Append one JSON line per request to this file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` (else 401).
    #[arg(long)]
    pub token: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM) …
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// … and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seed of the fault dice (reproducible runs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// A rustls acceptor for `--tls-cert`/`--tls-key`.
fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, MockError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let e = |what: &Path, err: &dyn std::fmt::Display| {
        MockError::Tls(format!("{}: {err}", what.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|x| e(cert, &x))?
        .collect::<Result<_, _>>()
        .map_err(|x| e(cert, &x))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|x| e(key, &x))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| MockError::Tls(x.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|x| MockError::Tls(x.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A fault switched on while the agent runs (a test's fault schedule);
/// it takes precedence over the fault flags of [`MockArgs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answer as the flags say.
    #[default]
    None,
    /// Answer every request with this status and, when set, `Retry-After`
    /// seconds (recorded like any answer).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Take the request and never answer (the connection stays open until
    /// the client gives up).
    Hang,
}

/// Switches a running agent's [`Fault`].
pub type FaultSwitch = Arc<Mutex<Fault>>;

struct State {
    args: MockArgs,
    fault: FaultSwitch,
    rng: fastrand::Rng,
    requests: u64,
    arrivals: u64,
    delivered: HashSet<String>,
    record: Option<std::fs::File>,
    started: Instant,
}

/// What to do with one request.
enum Verdict {
    Reply(StatusCode, String, Option<u64>),
    Drop,
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

fn decide(state: &Mutex<State>, auth: Option<&str>, key: Option<&str>, body: &[u8]) -> Verdict {
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    s.requests += 1;
    let n = s.requests;
    let payload: Option<UtterancePayload> = serde_json::from_slice(body).ok();
    let id = key.map(str::to_owned);
    let expected = s.args.token.as_ref().map(|t| format!("Bearer {t}"));
    let fault = *s.fault.lock().unwrap_or_else(PoisonError::into_inner);
    let (status, reply, duplicate, dropped) = if let Fault::Status { status, .. } = fault {
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "{\"error\":\"injected fault\"}".to_owned(),
            false,
            false,
        )
    } else if expected.is_some() && expected.as_deref() != auth {
        (
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"unauthorized\"}".to_owned(),
            false,
            false,
        )
    } else if id.is_none() || payload.is_none() {
        (
            StatusCode::BAD_REQUEST,
            "{\"error\":\"Idempotency-Key and a JSON utterance are required\"}".to_owned(),
            false,
            false,
        )
    } else if n <= s.args.fail_first || s.rng.f64() < s.args.fail_rate {
        let st = StatusCode::from_u16(s.args.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        (
            st,
            "{\"error\":\"injected failure\"}".to_owned(),
            false,
            false,
        )
    } else {
        let id = id.clone().unwrap_or_default();
        let duplicate = s.delivered.contains(&id);
        if !duplicate && s.delivered.len() < MAX_IDS {
            s.delivered.insert(id);
        }
        let dropped = s.rng.f64() < s.args.drop_connection_rate;
        if duplicate {
            (
                StatusCode::CONFLICT,
                "{\"error\":\"already delivered\"}".to_owned(),
                true,
                dropped,
            )
        } else {
            let text = payload.as_ref().map_or("", |p| p.text.as_str());
            let reply =
                serde_json::json!({ "reply_text": format!("You said: {text}") }).to_string();
            (StatusCode::OK, reply, false, dropped)
        }
    };
    let line = serde_json::json!({
        "n": n,
        "at_ms": s.started.elapsed().as_millis() as u64,
        "id": id,
        "status": status.as_u16(),
        "duplicate": duplicate,
        "dropped": dropped,
        "text": payload.as_ref().map(|p| p.text.clone()),
        "device_id": payload.as_ref().map(|p| p.device_id.clone()),
    });
    if let Some(f) = s.record.as_mut() {
        let _ = writeln!(f, "{line}");
    }
    if dropped {
        Verdict::Drop
    } else {
        let retry_after = match fault {
            Fault::Status { retry_after, .. } => retry_after,
            _ => (!status.is_success() && status != StatusCode::CONFLICT)
                .then_some(s.args.retry_after)
                .flatten(),
        };
        Verdict::Reply(status, reply, retry_after)
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let delay = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.arrivals += 1;
        if s.args.slow_first == 0 || s.arrivals <= s.args.slow_first {
            Duration::from_millis(s.args.delay_ms)
        } else {
            Duration::ZERO
        }
    };
    let (parts, body) = req.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (auth, key) = (header("authorization"), header(IDEMPOTENCY_KEY));
    let reply = |status: StatusCode, text: String| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    if parts.method != hyper::Method::POST || parts.uri.path() != UTTERANCES_PATH {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "{\"error\":\"POST /v1/utterances\"}".into(),
        ));
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "{\"error\":\"body too large\"}".into(),
            ))
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let hang = {
        let s = state.lock().unwrap_or_else(PoisonError::into_inner);
        let f = *s.fault.lock().unwrap_or_else(PoisonError::into_inner);
        f == Fault::Hang
    };
    if hang {
        // Until the client gives up (the connection task is dropped then).
        std::future::pending::<()>().await;
    }
    match decide(&state, auth.as_deref(), key.as_deref(), &body) {
        Verdict::Drop => Err(Dropped),
        Verdict::Reply(status, text, retry_after) => {
            let mut r = reply(status, text);
            if let Some(s) = retry_after {
                if let Ok(v) = hyper::header::HeaderValue::from_str(&s.to_string()) {
                    r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
                }
            }
            Ok(r)
        }
    }
}

/// Serve until SIGINT/SIGTERM (the `talkie-mock-agent` binary); prints
/// `mock-agent listening on ADDR` on stdout once bound.
pub fn run(args: MockArgs) -> Result<(), MockError> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(MockError::Runtime)?;
        let (listener, addr) = bind(&args).await?;
        println!("mock-agent listening on {addr}");
        let _ = std::io::stdout().flush();
        serve(listener, args, FaultSwitch::default(), async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
    })
}

/// A mock agent running in this process on its own thread and runtime
/// (tests and benchmarks); stopped and joined on drop, which frees its
/// port.
#[derive(Debug)]
pub struct MockAgent {
    addr: SocketAddr,
    fault: FaultSwitch,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), MockError>>>,
}

impl MockAgent {
    /// Bind and serve `args`; returns once the port is bound.
    pub fn spawn(args: MockArgs) -> Result<Self, MockError> {
        let (bound_tx, bound_rx) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let fault = FaultSwitch::default();
        let switch = Arc::clone(&fault);
        let thread = std::thread::Builder::new()
            .name("mock-agent".into())
            .spawn(move || {
                let rt = runtime()?;
                rt.block_on(async move {
                    let (listener, addr) = match bind(&args).await {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = bound_tx.send(Ok(addr));
                    serve(listener, args, switch, async move {
                        let _ = stopped.await;
                    })
                    .await
                })
            })
            .map_err(MockError::Runtime)?;
        let addr = match bound_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(MockError::Runtime(std::io::Error::other(
                    "mock agent did not start",
                )))
            }
        };
        Ok(Self {
            addr,
            fault,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switch the fault every later request meets.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }
}

impl Drop for MockAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, MockError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(MockError::Runtime)
}

async fn bind(args: &MockArgs) -> Result<(TcpListener, SocketAddr), MockError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| MockError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| MockError::Bind {
        addr: args.listen,
        source,
    })?;
    Ok((listener, addr))
}

/// Answer requests on `listener` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    args: MockArgs,
    fault: FaultSwitch,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), MockError> {
    let record = match &args.record {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| MockError::Record {
                    path: p.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    let state = Arc::new(Mutex::new(State {
        rng: fastrand::Rng::with_seed(args.seed),
        args,
        fault,
        requests: 0,
        arrivals: 0,
        delivered: HashSet::new(),
        record,
        started: Instant::now(),
    }));
    let mut conns = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                let tls = tls.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&state), req));
                    match tls {
                        Some(acceptor) => {
                            // A client that does not trust us ends here.
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = &mut stop => break,
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    Ok(())
}
