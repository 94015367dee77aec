//! The agent's reachability, step by step (issue 20 item 2): DNS, TCP
//! connect, then one HTTP(S) request (TLS handshake included) whose answer
//! gives the status, the server's `Date` and, over TLS, the certificate's
//! expiry. Checked in the background every [`EVERY`], each step with its
//! own timeout, so a technician sees *which* step fails ("DNS" is a
//! different visit from "certificate expired") beside the breaker state.
//!
//! The probe sends `HEAD {agent.url}` with no token: it never delivers,
//! never reads a body, follows no redirect.

use super::AgentStats;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the agent is checked.
pub const EVERY: Duration = Duration::from_secs(60);
/// DNS and TCP connect, each.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// The HTTP(S) request, TLS handshake included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses listed.
const MAX_ADDRESSES: usize = 4;

/// One check's outcome; a `None` time is a step not reached.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Reachability {
    pub checked_unix_ms: u64,
    pub host: String,
    pub dns_ms: Option<f64>,
    pub addresses: Vec<String>,
    pub connect_ms: Option<f64>,
    /// TLS handshake plus the request and its answer's head.
    pub request_ms: Option<f64>,
    pub http_status: Option<u16>,
    pub tls: bool,
    /// The agent's certificate: end of validity, Unix seconds.
    pub cert_not_after_unix_s: Option<i64>,
    /// The step that failed (`dns`, `connect`, `request`) and why.
    pub failed_step: Option<&'static str>,
    pub error: Option<String>,
}

impl Reachability {
    /// Days the certificate has left at `now_s` (negative: expired).
    pub fn cert_days_left(&self, now_s: i64) -> Option<i64> {
        self.cert_not_after_unix_s
            .map(|t| (t - now_s).div_euclid(86_400))
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Check `url` once. `client` must have `tls_info(true)` for the
/// certificate ([`probe_client`]).
pub async fn check(client: &reqwest::Client, url: &reqwest::Url) -> Reachability {
    let mut r = Reachability {
        checked_unix_ms: crate::base::telemetry::unix_ms(),
        host: url.host_str().unwrap_or_default().to_owned(),
        tls: url.scheme() == "https",
        ..Default::default()
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let fail = |r: &mut Reachability, step: &'static str, e: String| {
        r.failed_step = Some(step);
        r.error = Some(e.chars().take(300).collect());
    };
    let t = Instant::now();
    let host = r.host.clone();
    let lookup =
        tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host.as_str(), port))).await;
    let addrs: Vec<std::net::SocketAddr> = match lookup {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => {
            fail(&mut r, "dns", format!("cannot resolve {host}: {e}"));
            return r;
        }
        Err(_) => {
            fail(
                &mut r,
                "dns",
                format!("no DNS answer within {STEP_TIMEOUT:?}"),
            );
            return r;
        }
    };
    r.dns_ms = Some(ms(t));
    r.addresses = addrs
        .iter()
        .take(MAX_ADDRESSES)
        .map(ToString::to_string)
        .collect();
    let Some(first) = addrs.first().copied() else {
        fail(&mut r, "dns", format!("{host} has no address"));
        return r;
    };
    let t = Instant::now();
    match tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(first)).await {
        Ok(Ok(_)) => r.connect_ms = Some(ms(t)),
        Ok(Err(e)) => {
            fail(&mut r, "connect", format!("{first}: {e}"));
            return r;
        }
        Err(_) => {
            fail(
                &mut r,
                "connect",
                format!("{first}: no answer within {STEP_TIMEOUT:?}"),
            );
            return r;
        }
    }
    let t = Instant::now();
    match tokio::time::timeout(REQUEST_TIMEOUT, client.head(url.clone()).send()).await {
        Ok(Ok(resp)) => {
            r.request_ms = Some(ms(t));
            r.http_status = Some(resp.status().as_u16());
            r.cert_not_after_unix_s = resp
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|i| i.peer_certificate())
                .and_then(not_after);
        }
        Ok(Err(e)) => fail(&mut r, "request", super::link::chain(&e.without_url())),
        Err(_) => fail(
            &mut r,
            "request",
            format!("no answer within {REQUEST_TIMEOUT:?}"),
        ),
    }
    r
}

/// The end of a DER certificate's validity, Unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The link's client settings plus the peer certificate in each answer.
pub fn probe_client(
    cfg: &crate::base::config::AgentConfig,
) -> Result<reqwest::Client, super::link::LinkError> {
    super::link::client_builder(cfg)?
        .tls_info(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| super::link::LinkError::Client(e.to_string()))
}

/// Check `url` now and every [`EVERY`] until `cancel`; each result goes to
/// `stats` (`/api/v1/status`, the page, `/metrics`).
pub async fn run(
    client: reqwest::Client,
    url: reqwest::Url,
    stats: Arc<AgentStats>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = tokio::select! {
            _ = cancel.cancelled() => return,
            r = check(&client, &url) => r,
        };
        if let Some(step) = r.failed_step {
            tracing::debug!(step, error = ?r.error, "agent reachability check failed");
        }
        stats.set_reachability(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over TLS with a private CA: every step timed, the status, and the
    /// certificate's end of validity as the CA wrote it; then the agent
    /// gone: the failing step is `connect`; an unknown host: `dns`.
    #[tokio::test]
    async fn every_step_is_timed_and_the_certificate_expiry_read() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_params(&ca, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_pem = write("ca.pem", ca_cert.pem());
        let cert = write("agent.pem", leaf.pem());
        let key = write("agent.key", leaf_key.serialize_pem());
        use clap::Parser;
        let mock = talkie_mock_agent::MockAgent::spawn(talkie_mock_agent::MockArgs::parse_from([
            "talkie-mock-agent",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]))
        .unwrap();
        let port = mock.addr().port();
        let cfg = crate::base::config::AgentConfig {
            ca_file: Some(ca_pem),
            ..Default::default()
        };
        let client = probe_client(&cfg).unwrap();
        let url = reqwest::Url::parse(&format!("https://localhost:{port}/")).unwrap();
        let r = check(&client, &url).await;
        assert_eq!(r.failed_step, None, "{r:?}");
        assert!(r.dns_ms.is_some() && r.connect_ms.is_some() && r.request_ms.is_some());
        assert!(r.http_status.is_some(), "{r:?}");
        assert!(r.tls);
        // 2031-05-17T00:00:00Z
        assert_eq!(r.cert_not_after_unix_s, Some(1_936_742_400), "{r:?}");
        assert_eq!(r.cert_days_left(1_936_742_400 - 86_400 * 3), Some(3));
        drop(mock);

        let r = check(&client, &url).await;
        assert_eq!(r.failed_step, Some("connect"), "{r:?}");
        assert!(r.dns_ms.is_some() && r.request_ms.is_none());
        let bad = reqwest::Url::parse("http://no-such-host.invalid/").unwrap();
        let r = check(&client, &bad).await;
        assert_eq!(r.failed_step, Some("dns"), "{r:?}");
    }
}
