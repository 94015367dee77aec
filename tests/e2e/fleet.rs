//! The fleet's view (issue 32): the Prometheus rules in `board/prometheus/`
//! checked and unit-tested by the real `promtool`, and every metric and
//! label they and the Grafana dashboards (`board/grafana/`) use found in
//! the `/metrics` of a running kiosk, so a rename breaks the build.

use crate::service::{in_process_config, start};
use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/prometheus")
}

/// `promtool`, or `None` when `TALKIE_SKIP_PROMTOOL=1` says on purpose
/// that it is missing (`make test` installs Debian's prometheus).
fn promtool() -> Option<PathBuf> {
    tools_or_skip(
        &["promtool"],
        "TALKIE_SKIP_PROMTOOL",
        "the prometheus package",
    )
    .map(|mut t| t.remove(0))
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = rules_dir();
    let out = run(Command::new(&promtool)
        .args(["check", "rules", "talkie-rules.yml"])
        .current_dir(&dir));
    assert_eq!(out.status.code(), Some(0));
    let out = run(Command::new(&promtool)
        .args(["test", "rules", "talkie-rules.test.yml"])
        .current_dir(&dir));
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("SUCCESS"));
}

/// Every `talkie_…` metric named in the rules' expressions, with the label
/// keys matched on it (`{key="…"}` or `{key=~"…"}`).
fn metrics_in_rules(rules: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("talkie_") {
            // Not a recorded series (`fleet:talkie_…`, `instance:talkie_…`).
            let recorded = rest[..at].ends_with(':');
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = tail[..end]
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_owned();
            let after = &tail[end..];
            let mut labels = BTreeSet::new();
            if let Some(body) = after.strip_prefix('{').and_then(|b| b.split_once('}')) {
                for m in body.0.split(',') {
                    if let Some((k, _)) = m.split_once('=') {
                        let k = k.trim().trim_end_matches('!');
                        // Prometheus's own target labels, not the kiosk's.
                        if k != "instance" && k != "job" {
                            labels.insert(k.to_owned());
                        }
                    }
                }
            }
            if !recorded {
                out.entry(name).or_default().extend(labels);
            }
            rest = &tail[end..];
        }
    }
    out
}

/// Families of an exposition and the label keys each one's samples carry.
fn families(exposition: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.entry(name.to_owned()).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, labels) = match line.split_once('{') {
            Some((n, l)) => (n, l.split_once('}').map_or("", |x| x.0)),
            None => (line.split_whitespace().next().unwrap_or(""), ""),
        };
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        let keys = out.entry(family.to_owned()).or_default();
        for kv in labels.split(',').filter(|kv| kv.contains('=')) {
            keys.insert(kv.split('=').next().unwrap_or("").to_owned());
        }
    }
    out
}

/// A kiosk with everything a fleet sees: a Pi's sysfs (a fake one), a TLS
/// agent (its certificate's expiry), a previous run (how it ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_rules_use_is_exported_by_a_running_kiosk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fake_board(&root, "55000\n", "0x0\n", &[]);
    let (mock, ca_pem) = tls_agent(dir.path());
    let mut cfg = in_process_config(dir.path(), "dev_01.wav", "fleet-technician-token-0123");
    cfg.board.root = root;
    cfg.agent.url = Some(format!("https://localhost:{}", mock.port));
    cfg.agent.ca_file = Some(ca_pem);
    cfg.outbox.path = dir.path().join("outbox.db");
    // A first run, so the second knows how the previous one ended.
    let h = start(cfg.clone()).await.unwrap();
    assert!(h.ready().await);
    h.shutdown();
    h.wait().await.unwrap();
    let h = start(cfg).await.unwrap();
    assert!(h.ready().await);
    let url = format!("http://{}/metrics", h.status_addr());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let exposition = loop {
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if body.contains("talkie_agent_cert_expiry_timestamp_seconds") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate expiry in {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    h.shutdown();
    h.wait().await.unwrap();
    // The exposition itself passes Prometheus' own linter.
    if let Some(promtool) = promtool() {
        use std::io::Write as _;
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(exposition.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exported = families(&exposition);
    let rules = std::fs::read_to_string(rules_dir().join("talkie-rules.yml")).unwrap();
    let dashboards = dashboard_exprs();
    let mut used = metrics_in_rules(&rules);
    let in_rules = used.len();
    for (name, labels) in metrics_in_rules(&dashboards.join("\n")) {
        used.entry(name).or_default().extend(labels);
    }
    assert!(
        in_rules >= 20,
        "the rules name {in_rules} metrics: {used:?}"
    );
    assert!(
        used.len() > in_rules,
        "the dashboards show more than the rules"
    );
    for (name, labels) in &used {
        let Some(have) = exported.get(name) else {
            panic!("the rules or dashboards use {name}, which a running kiosk does not export");
        };
        for l in labels {
            assert!(
                have.contains(l),
                "{name} is matched on label {l}; it has {have:?}"
            );
        }
    }
    // The recorded series the dashboards draw are recorded by the rules.
    for e in &dashboards {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.contains(":talkie_") {
                assert!(
                    rules.contains(&format!("record: {word}\n")),
                    "{word} is not recorded"
                );
            }
        }
    }
}

/// Every PromQL expression of the Grafana dashboards in `board/grafana/`
/// (each file valid JSON with a `datasource` variable).
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/grafana");
    let mut out = Vec::new();
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let vars = v["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|x| x["type"] == "datasource"),
            "{}: a datasource variable",
            path.display()
        );
        let before = out.len();
        walk(&v, &mut out);
        assert!(
            out.len() > before + 5,
            "{}: panels with queries",
            path.display()
        );
    }
    out
}

/// A real Prometheus (Debian's) on loopback with the shipped scrape
/// configuration (file-based discovery of a kiosk list) against three
/// kiosks, each a service in this process: all targets up, the recording
/// rules evaluating, and the one kiosk whose agent answers 401 raises
/// `TalkieDeliveryPaused`. The rules' `for:` are the one test-only
/// override (minutes become a second, in a copy of the rules).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_three_kiosks_and_fires_on_the_paused_one() {
    let Ok(prometheus) = which("prometheus") else {
        assert!(
            std::env::var_os("TALKIE_SKIP_PROMTOOL").is_some(),
            "prometheus is not installed (make test installs it; set TALKIE_SKIP_PROMTOOL=1 to skip)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut kiosks = Vec::new();
    let mut agents = Vec::new();
    for (i, clip) in ["dev_00.wav", "dev_01.wav", "dev_02.wav"]
        .iter()
        .enumerate()
    {
        let kdir = dir.path().join(format!("kiosk{i}"));
        std::fs::create_dir_all(&kdir).unwrap();
        // The third kiosk's agent wants another token: 401, delivery paused.
        let args: &[&str] = if i == 2 {
            &["--token", "the-agents-token"]
        } else {
            &[]
        };
        let agent = MockAgent::start(&kdir, "127.0.0.1:0", args);
        let mut cfg = in_process_config(&kdir, clip, "fleet-technician-token-0123");
        cfg.agent.url = Some(format!("http://127.0.0.1:{}", agent.port));
        cfg.agent.token = Some(talkie::base::config::Secret::new("a-stale-token"));
        cfg.outbox.path = kdir.join("outbox.db");
        let h = start(cfg).await.unwrap();
        assert!(h.ready().await);
        kiosks.push(h);
        agents.push(agent);
    }
    let targets: Vec<String> = kiosks.iter().map(|h| h.status_addr().to_string()).collect();
    let shipped = rules_dir();
    write(
        dir.path(),
        "kiosks.json",
        &serde_json::json!([{ "targets": targets, "labels": { "site": "test" } }]).to_string(),
    );
    let rules = std::fs::read_to_string(shipped.join("talkie-rules.yml")).unwrap();
    let scaled: String = rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 1s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    write(dir.path(), "talkie-rules.yml", &scaled);
    let config = std::fs::read_to_string(shipped.join("prometheus.yml"))
        .unwrap()
        .replace("scrape_interval: 30s", "scrape_interval: 1s")
        .replace("evaluation_interval: 30s", "evaluation_interval: 1s");
    let config = write(dir.path(), "prometheus.yml", &config);
    let port = free_port();
    let mut server = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(dir.path().join("prometheus.log"))
                .map(std::process::Stdio::from)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let api = |q: String| async move {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/{q}"))
            .await
            .ok()?;
        serde_json::from_slice::<serde_json::Value>(&r.bytes().await.ok()?).ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut seen = (false, false, false);
    while std::time::Instant::now() < deadline && seen != (true, true, true) {
        if let Some(t) = api("targets".into()).await {
            let active = t["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            seen.0 = active.len() == 3 && active.iter().all(|x| x["health"] == "up");
        }
        if let Some(r) = api("query?query=fleet:talkie_kiosks:by_precision".into()).await {
            let total: f64 = r["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .sum();
            seen.1 = total == 3.0;
        }
        if let Some(a) = api("alerts".into()).await {
            let alerts = a["data"]["alerts"].as_array().cloned().unwrap_or_default();
            let paused: Vec<&serde_json::Value> = alerts
                .iter()
                .filter(|x| x["labels"]["alertname"] == "TalkieDeliveryPaused")
                .collect();
            seen.2 = paused.len() == 1
                && paused[0]["state"] == "firing"
                && paused[0]["labels"]["instance"] == targets[2].as_str();
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    for h in kiosks {
        h.shutdown();
        h.wait().await.unwrap();
    }
    assert_eq!(
        seen,
        (true, true, true),
        "(3 targets up, recording rules evaluating, the paused kiosk's alert firing); prometheus log: {}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
}
