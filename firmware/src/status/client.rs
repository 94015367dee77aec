//! This machine as the status server's client: the watchdog's loopback
//! probe and `talkie health` (the update systems' readiness hook).

use super::*;

/// `http://ADDR{path}` for a request to the server listening on `listen`
/// from this machine (an unspecified address is reached over loopback).
pub fn local_url(listen: SocketAddr, path: &str) -> String {
    let ip = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    format!("http://{}{path}", SocketAddr::new(ip, listen.port()))
}
/// The HTTP loop's heartbeat for the watchdog: every `every`, `GET
/// /healthz` on the bound address through the real server (2 s timeout);
/// a 200 calls `beat` (in `run`: [`Shared::http_beat_ms`]). A server that
/// stops accepting or answering stops the beat, and with it the watchdog
/// pings. Ends on `cancel`.
pub async fn probe(
    bound: SocketAddr,
    beat: impl Fn() + Send + 'static,
    every: Duration,
    cancel: CancellationToken,
) {
    let url = local_url(bound, "/healthz");
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "status server probe: no HTTP client; the http loop will not beat");
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.get(&url).send() => match r {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        match outcome {
            Ok(()) => {
                beat();
                if std::mem::take(&mut failing) {
                    tracing::info!(url = %url, "status server probe answers again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(url = %url, error = %e, "status server probe failed");
            }
            Err(_) => {}
        }
    }
}
/// Why `talkie health` reports the service unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The last answer (or connection error) when the wait ran out.
    #[error("{0}")]
    NotReady(String),
}
/// `talkie health --wait S`: poll the running service's `/readyz` on
/// `status.listen` until it answers 200 (Ok) or `wait` has passed (Err with
/// the last reason). The hook an update system calls before committing a
/// release.
pub fn health(listen: SocketAddr, wait: Duration) -> Result<String, HealthError> {
    let url = local_url(listen, "/readyz");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HealthError::Runtime)?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(HealthError::Client)?;
        let deadline = Instant::now() + wait;
        loop {
            let why = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(format!("{url}: ready")),
                Ok(r) => {
                    let code = r.status();
                    format!(
                        "{url}: {code} {}",
                        r.text().await.unwrap_or_default().trim()
                    )
                }
                Err(e) => format!("{url}: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(HealthError::NotReady(why));
            }
            tokio::time::sleep(Duration::from_millis(500).min(deadline - Instant::now())).await;
        }
    })
}
