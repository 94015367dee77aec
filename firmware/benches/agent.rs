//! Agent-link benchmark: 10,000 transcripts through the real binaries —
//! `talkie outbox add`, then `talkie outbox deliver --until-empty` against
//! `talkie-mock-agent --fail-rate 0.3 --drop-connection-rate 0.05` over
//! loopback. Checks from the agent's own record: none lost, none accepted
//! twice, order preserved; reports throughput, retries and duplicates on
//! the wire. Writes `target/bench/agent.md` and `target/bench/agent.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{machine, write_report};
use std::collections::HashSet;
use std::process::Command;
use std::time::Instant;

const N: usize = 10_000;

fn main() {
    let talkie = env!("CARGO_BIN_EXE_talkie");
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("agent.jsonl");
    // The development mock agent, in this process on its own thread.
    let mock = {
        use clap::Parser;
        let args = talkie_mock_agent::MockArgs::parse_from([
            "talkie-mock-agent",
            "--listen",
            "127.0.0.1:0",
            "--fail-rate",
            "0.3",
            "--drop-connection-rate",
            "0.05",
            "--seed",
            "7",
            "--record",
            record.to_str().unwrap(),
        ]);
        talkie_mock_agent::MockAgent::spawn(args).unwrap()
    };
    let port = mock.addr().port();
    let cfg = dir.path().join("talkie.toml");
    std::fs::write(
        &cfg,
        format!(
            "[device]\nid = \"bench\"\n[agent]\nurl = \"http://127.0.0.1:{port}\"\n\
             backoff_min_ms = 10\nbackoff_max_ms = 20\nbreaker_failures = 1000\n\
             [outbox]\npath = {:?}\nmax_items = {N}\n",
            dir.path().join("outbox.db")
        ),
    )
    .unwrap();
    let add = Command::new(talkie)
        .arg("--config")
        .arg(&cfg)
        .args([
            "outbox",
            "add",
            "--repeat",
            &N.to_string(),
            "how do I get to gate",
        ])
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let ids: Vec<String> = String::from_utf8_lossy(&add.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), N);
    eprintln!("agent bench: delivering {N} transcripts through a faulty agent…");
    let t0 = Instant::now();
    let out = Command::new(talkie)
        .arg("--config")
        .arg(&cfg)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "warn,talkie::agent::summary=info")
        .args(["outbox", "deliver", "--until-empty"])
        .output()
        .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    drop(mock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "agent link summary")
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let accepted: Vec<&str> = records
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = accepted.iter().copied().collect();
    let lost = ids.iter().filter(|i| !unique.contains(i.as_str())).count();
    let twice = accepted.len() - unique.len();
    let in_order = accepted.iter().zip(&ids).all(|(a, b)| *a == b.as_str());
    let failed = records.iter().filter(|r| r["status"] == 503).count();
    let dropped = records.iter().filter(|r| r["dropped"] == true).count();
    let dup_409 = records.iter().filter(|r| r["status"] == 409).count();
    let retries = summary["retries"].as_u64().unwrap_or(0);
    let rate = N as f64 / secs;
    assert_eq!(lost, 0, "lost transcripts");
    assert_eq!(twice, 0, "accepted twice");
    assert!(in_order, "order");
    let machine = machine();
    let json = serde_json::json!({
        "bench": "agent",
        "machine": machine,
        "input": format!("{N} transcripts, mock agent failing 30 % (503) and dropping 5 % of connections"),
        "seconds": secs,
        "transcripts_per_second": rate,
        "requests": records.len(),
        "injected_503": failed,
        "dropped_connections": dropped,
        "duplicates_on_the_wire_409": dup_409,
        "retries": retries,
        "lost": lost,
        "accepted_twice": twice,
        "order_preserved": in_order,
    });
    let md = format!(
        "# Agent-link benchmark\n\nMachine: {machine}; release build; loopback HTTP.\n\
         Input: {N} transcripts added with `talkie outbox add`, delivered by `talkie outbox deliver \
         --until-empty` (backoff 10–20 ms, breaker at 1000 failures) to `talkie-mock-agent --fail-rate 0.3 \
         --drop-connection-rate 0.05 --seed 7`; outbox in SQLite, WAL, synchronous=FULL.\n\n\
         | measure | value |\n|---|---|\n\
         | time to deliver all | {secs:.1} s |\n\
         | throughput | {rate:.0} transcripts/s |\n\
         | HTTP requests | {} |\n\
         | injected 503 / dropped connections | {failed} / {dropped} |\n\
         | retries by talkie | {retries} |\n\
         | duplicates on the wire (409 from the agent) | {dup_409} |\n\
         | lost | {lost} |\n\
         | accepted twice by the deduplicating agent | {twice} |\n\
         | order preserved | {in_order} |\n\n\
         Command: `make bench` (`cargo bench -p talkie --bench agent`).\n",
        records.len()
    );
    write_report("agent", &json, &md);
}
