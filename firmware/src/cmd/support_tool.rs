//! `talkie support-bundle OUT.tar.gz`, for a technician on SSH: the
//! running service's bundle (`GET /api/v1/support-bundle` over loopback
//! with the configured technician token), or, when the service does not
//! give one (stopped, crashing, no token readable here), a bundle of what
//! the disk and the kernel say: effective configuration, calibration, run
//! history, board health, the outbox file's size, the journal's last
//! lines, versions, and why the live part is missing.
//!
//! Read-only: nothing here opens the outbox database (opening a damaged
//! one would move it aside) or changes a file but `OUT`.

use crate::base::config::Config;
use crate::base::support::{Bundle, SupportError};
use std::path::Path;
use std::time::Duration;

/// The most bytes accepted from the service.
const MAX_BUNDLE: usize = 64 * 1024 * 1024;
/// The whole request to the service, connection to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// `journalctl` gets this long.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Journal lines in an offline bundle.
const JOURNAL_LINES: &str = "2000";
/// Bytes of journal kept (2000 lines of a few hundred bytes fit).
const MAX_JOURNAL: u64 = 2 * 1024 * 1024;
/// Bytes read of each small state file.
const MAX_STATE_FILE: u64 = 1024 * 1024;

/// Which bundle was written.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// The running service's.
    Live,
    /// From the disk; the string says why the service's is missing.
    Offline(String),
}

/// Write the bundle to `out`.
pub fn run(cfg: &Config, out: &Path) -> Result<Written, SupportError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SupportError::Archive)?;
    let live = rt.block_on(fetch(cfg));
    match live {
        Ok(bytes) => {
            crate::base::support::write_file(out, &bytes)?;
            Ok(Written::Live)
        }
        Err(why) => {
            let bytes = rt
                .block_on(offline(cfg, &why))
                .finish(crate::base::telemetry::unix_ms() / 1000)?;
            crate::base::support::write_file(out, &bytes)?;
            Ok(Written::Offline(why))
        }
    }
}

/// The running service's bundle, or why there is none.
async fn fetch(cfg: &Config) -> Result<Vec<u8>, String> {
    let token = cfg.status.token.as_ref().ok_or_else(|| {
        "no technician token readable here (status.token_file, or run where the \
         status-token credential is)"
            .to_owned()
    })?;
    let url = crate::status::local_url(cfg.status.listen, "/api/v1/support-bundle");
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let mut r = client
        .get(&url)
        .bearer_auth(token.expose())
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !r.status().is_success() {
        let code = r.status();
        let body = r.text().await.unwrap_or_default();
        return Err(format!(
            "{url}: {code} {}",
            body.chars().take(200).collect::<String>()
        ));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if bytes.len() + chunk.len() > MAX_BUNDLE {
            return Err(format!("{url}: answer larger than {MAX_BUNDLE} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// What can be known without the service.
async fn offline(cfg: &Config, why: &str) -> Bundle {
    let mut b = Bundle::new();
    for secret in cfg.secret_values() {
        b.secret(secret.expose());
    }
    b.file(
        "service.txt",
        format!(
            "The running service's bundle could not be fetched:\n{why}\n\n\
             This bundle was made by `talkie support-bundle` from the disk and \
             the kernel only: no live status, metrics or log ring.\n"
        ),
    );
    b.json("config.json", &crate::base::config::redacted(cfg));
    b.file("calibration.json", small_file(&cfg.stt.calibration_file));
    b.file(
        "runs.json",
        small_file(&cfg.device.state_dir.join(crate::base::runs::FILE_NAME)),
    );
    let facts = crate::platform::board::ProcessFacts {
        disk: crate::base::telemetry::disk_space(&cfg.outbox.path),
        fds_open: None,
        fds_max: None,
    };
    b.json(
        "board.json",
        &crate::platform::board::read(
            &cfg.board.root,
            &facts,
            &crate::platform::board::Thresholds::from_config(&cfg.board),
        ),
    );
    let outbox = std::fs::metadata(&cfg.outbox.path);
    b.json(
        "outbox.json",
        &serde_json::json!({
            "path": cfg.outbox.path,
            "bytes": outbox.as_ref().ok().map(std::fs::Metadata::len),
            "error": outbox.as_ref().err().map(ToString::to_string),
        }),
    );
    b.file("journal.txt", journal().await);
    b.json(
        "versions.json",
        &serde_json::json!({
            "talkie": crate::VERSION,
            "kernel": std::fs::read_to_string(cfg.board.root.join("proc/sys/kernel/osrelease"))
                .ok()
                .map(|s| s.trim().to_owned()),
        }),
    );
    b
}

/// Up to [`MAX_STATE_FILE`] bytes of a state file, or why it cannot be read.
fn small_file(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut bytes = Vec::new();
    match std::fs::File::open(path).and_then(|f| f.take(MAX_STATE_FILE).read_to_end(&mut bytes)) {
        Ok(_) => bytes,
        Err(e) => format!("{}: {e}\n", path.display()).into_bytes(),
    }
}

/// The unit's last journal lines (transcript words omitted), or why not.
async fn journal() -> Vec<u8> {
    let args = [
        "-u",
        "talkie.service",
        "-n",
        JOURNAL_LINES,
        "--no-pager",
        "-o",
        "short-iso",
    ];
    match crate::base::tool::run("journalctl", &args, JOURNAL_TIMEOUT, MAX_JOURNAL).await {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines: String = text
                .lines()
                .map(|l| {
                    crate::base::support::omit_transcript_text(l).unwrap_or_else(|| l.to_owned())
                })
                .collect::<Vec<_>>()
                .join("\n");
            if !out.success {
                lines.push_str(&format!(
                    "\n[journalctl {}: {}]\n",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            lines.into_bytes()
        }
        Err(e) => format!("{e}\n").into_bytes(),
    }
}
