//! The mock agent process and the `talkie outbox` helpers.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A `talkie-mock-agent` running in the test process (its own thread and
/// runtime), stopped on drop. `args` are the binary's own flags.
pub struct MockAgent {
    /// Stopped on drop.
    server: talkie_mock_agent::MockAgent,
    pub port: u16,
    pub record: PathBuf,
}

impl MockAgent {
    pub fn start(dir: &Path, listen: &str, args: &[&str]) -> Self {
        use clap::Parser;
        let record = dir.join(format!("mock-{}.jsonl", listen.replace([':', '.'], "_")));
        let mut argv = vec!["talkie-mock-agent", "--listen", listen, "--record"];
        let record_arg = record.to_str().unwrap().to_owned();
        argv.push(&record_arg);
        argv.extend_from_slice(args);
        let server =
            talkie_mock_agent::MockAgent::spawn(talkie_mock_agent::MockArgs::parse_from(argv))
                .unwrap();
        MockAgent {
            port: server.addr().port(),
            server,
            record,
        }
    }

    /// Switch the fault every later request meets.
    pub fn set_fault(&self, fault: talkie_mock_agent::Fault) {
        self.server.set_fault(fault);
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A mock agent serving HTTPS on a free port for `localhost`, with a
/// certificate signed by a private CA; returns it and the CA's PEM file.
pub fn tls_agent(dir: &Path) -> (MockAgent, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca_pem = write(dir, "ca.pem", &ca_cert.pem());
    let cert_pem = write(dir, "agent.pem", &leaf.pem());
    let key_pem = write(dir, "agent.key", &leaf_key.serialize_pem());
    let mock = MockAgent::start(
        dir,
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ],
    );
    (mock, ca_pem)
}

/// A configuration with an agent at `port` and small backoffs.
pub fn agent_config(dir: &Path, port: u16) -> PathBuf {
    write(
        dir,
        "talkie.toml",
        &format!(
            "[device]\nid = \"e2e-kiosk\"\n[agent]\nurl = \"http://127.0.0.1:{port}\"\n\
             backoff_min_ms = 20\nbackoff_max_ms = 200\nbreaker_failures = 1000\n\
             request_timeout_ms = 2000\n[outbox]\npath = {:?}\nmax_items = 10000\n",
            dir.join("outbox.db")
        ),
    )
}

/// A temporary directory, a mock agent on a free port started with `args`,
/// and a configuration pointing at it.
pub fn agent_setup(args: &[&str]) -> (tempfile::TempDir, MockAgent, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockAgent::start(dir.path(), "127.0.0.1:0", args);
    let cfg = agent_config(dir.path(), mock.port);
    (dir, mock, cfg)
}

/// Replace `from` by `to` in the file at `cfg`.
pub fn edit(cfg: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", cfg.display());
    std::fs::write(cfg, text.replace(from, to)).unwrap();
}

/// `talkie outbox add` of `n` numbered texts; returns their ids in order.
pub fn outbox_add(cfg: &Path, n: u32) -> Vec<String> {
    let out = run(talkie().arg("--config").arg(cfg).args([
        "outbox",
        "add",
        "--repeat",
        &n.to_string(),
        "where is the exit",
    ]));
    assert_eq!(out.status.code(), Some(0));
    text(&out.stdout).lines().map(str::to_owned).collect()
}

pub fn outbox_status(cfg: &Path) -> serde_json::Value {
    let out = run(talkie().arg("--config").arg(cfg).args(["outbox", "status"]));
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_str(text(&out.stdout).trim()).unwrap()
}

pub fn deliver(cfg: &Path) -> Output {
    run(talkie().arg("--config").arg(cfg).args([
        "--log-format",
        "json",
        "outbox",
        "deliver",
        "--until-empty",
    ]))
}

/// Start `outbox deliver --until-empty` and read its JSON log lines until
/// `until` has matched `count` lines; returns the running child.
pub fn deliver_until(cfg: &Path, until: &str, count: usize) -> std::process::Child {
    use std::io::BufRead;
    let mut child = talkie()
        .arg("--config")
        .arg(cfg)
        .args(["--log-format", "json", "outbox", "deliver", "--until-empty"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = 0;
    let mut lines = std::io::BufReader::new(stderr).lines();
    while seen < count {
        let line = lines.next().expect("deliver ended early").unwrap();
        if line.contains(until) {
            seen += 1;
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}
