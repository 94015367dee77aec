//! The layers as a test, in every crate with layers (`talkie`,
//! `talkie-speech`, `talkie-hal`): [`LAYERS`] gives each module a rank, and
//! a module may import only modules of a lower rank — never one above, never
//! one beside it. Within any folder, sibling modules (`super::x`,
//! `crate::a::x`) import each other without a cycle. Read from the source
//! files (comments and `mod tests` excluded), so an import that breaks the
//! layering fails `cargo test --lib`. docs/architecture.md's layer table is
//! generated from [`LAYERS`] and checked here (`TALKIE_BLESS=1` rewrites
//! it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One module and its rank: `(crate folder, module path, rank, layer,
/// what it holds)`. A module path covers its submodules.
type Entry = (&'static str, &'static str, u8, &'static str, &'static str);

/// The one table of layers. Ranks are banded by layer; a module imports
/// only lower ranks, so a layer never imports one above it, and two
/// modules of one rank never import each other.
pub(crate) const LAYERS: &[Entry] = &[
    // talkie-hal
    (
        "hal",
        "sim_clock",
        1,
        "hal",
        "the simulation clock of file sources and scripts",
    ),
    (
        "hal",
        "audio",
        2,
        "hal",
        "`AudioSource`: ALSA capture, WAV-file capture",
    ),
    (
        "hal",
        "gpio",
        2,
        "hal",
        "`Button`, `Indicators`: rppal, APA102, script button, recorded LED timeline",
    ),
    // talkie-speech
    (
        "speech",
        "models",
        1,
        "speech",
        "model manifest, sha256 checks, file names",
    ),
    (
        "speech",
        "vad",
        2,
        "speech",
        "Silero VAD on tract and the segmenter",
    ),
    (
        "speech",
        "options",
        3,
        "speech",
        "`RecognizerOptions`, `Precision`, `Threads`",
    ),
    (
        "speech",
        "stt",
        4,
        "speech",
        "Whisper on tract, `Recognizer`, calibration",
    ),
    // talkie: the speech crate's modules under the names the firmware uses
    (
        "firmware",
        "models",
        0,
        "speech",
        "re-export of `talkie_speech::models`",
    ),
    (
        "firmware",
        "vad",
        0,
        "speech",
        "re-export of `talkie_speech::vad`",
    ),
    (
        "firmware",
        "stt",
        0,
        "speech",
        "re-export of `talkie_speech::stt`",
    ),
    // talkie: foundations
    (
        "firmware",
        "base::config",
        10,
        "foundations",
        "the TOML file, overrides, validation, secrets, model paths, what a reload applies",
    ),
    (
        "firmware",
        "base::telemetry",
        10,
        "foundations",
        "the counters and gauges every loop publishes",
    ),
    (
        "firmware",
        "base::threads",
        10,
        "foundations",
        "named threads joined with a deadline",
    ),
    (
        "firmware",
        "base::private_files",
        10,
        "foundations",
        "umask, 0700 directories, 0600 files, no symlinks followed",
    ),
    (
        "firmware",
        "base::tool",
        10,
        "foundations",
        "system tools run with a deadline and bounded output",
    ),
    (
        "firmware",
        "base::logring",
        11,
        "foundations",
        "the log ring the status page shows",
    ),
    (
        "firmware",
        "base::supervisor",
        11,
        "foundations",
        "heartbeats, wedge detection, systemd notify",
    ),
    (
        "firmware",
        "base::runs",
        11,
        "foundations",
        "the run history in the state directory",
    ),
    (
        "firmware",
        "base::support",
        11,
        "foundations",
        "the support bundle's archive, secrets scrubbed",
    ),
    (
        "firmware",
        "base::logging",
        12,
        "foundations",
        "tracing set-up: journald, JSON, the ring",
    ),
    // talkie: the board
    (
        "firmware",
        "platform::board",
        20,
        "platform",
        "board health from `/proc` and `/sys`, clock sync",
    ),
    (
        "firmware",
        "platform::updates",
        21,
        "platform",
        "the update system's slots and artifacts (RAUC, Mender, SWUpdate)",
    ),
    // talkie: audio
    (
        "firmware",
        "audio",
        30,
        "audio",
        "capture thread → SPSC queue → audio thread: downmix, resample, level, pre-roll",
    ),
    // talkie: features
    (
        "firmware",
        "agent",
        40,
        "features",
        "outbox, delivery link, breaker, `talkie outbox`",
    ),
    (
        "firmware",
        "ptt",
        41,
        "features",
        "push-to-talk: state machine, listener, recognition worker, button, LEDs, kept recordings",
    ),
    (
        "firmware",
        "status",
        42,
        "features",
        "the status page and API: router, handlers, SSE, metrics, auth, accept loop",
    ),
    // talkie: the service
    (
        "firmware",
        "service",
        50,
        "service",
        "`Service::start` → `ServiceHandle`: wiring, control loop, watchdog, shutdown",
    ),
    // talkie: the binary's commands
    (
        "firmware",
        "cmd::run",
        60,
        "binary",
        "`talkie run`: the runtime and signal handlers",
    ),
    (
        "firmware",
        "cmd::offline",
        60,
        "binary",
        "`talkie vad`, `talkie transcribe`",
    ),
    ("firmware", "cmd::record", 60, "binary", "`talkie record`"),
    (
        "firmware",
        "cmd::support_tool",
        60,
        "binary",
        "`talkie support-bundle`",
    ),
    ("firmware", "cmd::bench", 61, "binary", "`talkie bench`"),
    (
        "firmware",
        "cmd::cli",
        62,
        "binary",
        "arguments, subcommands, exit codes",
    ),
];

/// One source file as a module: its path (`["status", "router"]`) and the
/// module paths its code names (`crate::…`, `super::…`, `self::…`),
/// resolved to absolute segments.
struct Source {
    module: Vec<String>,
    file: PathBuf,
    uses: Vec<Vec<String>>,
}

fn read_crate(src: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(src).unwrap();
            if p.is_dir() {
                if rel != Path::new("bin") {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let mut module: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|l| l == "mod") {
                module.pop();
            }
            if module == ["layering"] {
                continue;
            }
            if module == ["lib"] || module == ["main"] {
                module.clear();
            }
            if module.last().is_some_and(|l| l == "tests") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let mut uses = Vec::new();
            for line in text.lines() {
                let t = line.trim_start();
                if t.starts_with("mod tests") {
                    break;
                }
                let code = line.split("//").next().unwrap_or("");
                for path in paths_in(code) {
                    if let Some(abs) = resolve(&module, &path) {
                        uses.push(abs);
                    }
                }
            }
            out.push(Source {
                module,
                file: p,
                uses,
            });
        }
    }
    out
}

/// Every path starting at `crate`, `super` or `self` in one line of code,
/// groups expanded: `use crate::{a::{x, y}, b};` → `crate::a::x`,
/// `crate::a::y`, `crate::b`.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let boundary =
            i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
        let Some(rest) = code.get(i..) else {
            i += 1;
            continue;
        };
        if boundary
            && ["crate::", "super::", "self::"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            let (paths, used) = parse_path(rest);
            out.extend(paths);
            i += used.max(1);
        } else {
            i += 1;
        }
    }
    out
}

/// `ident(::ident)*(::{list})?` from the start of `s`: the expanded paths
/// and the bytes read.
fn parse_path(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut segs = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        if i == start {
            break;
        }
        segs.push(s[start..i].to_owned());
        if s[i..].starts_with("::") {
            i += 2;
            if s[i..].starts_with('{') {
                i += 1;
                let mut out = Vec::new();
                loop {
                    while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\n') {
                        i += 1;
                    }
                    if i >= b.len() || b[i] == b'}' {
                        return (out, i + 1);
                    }
                    let (inner, used) = parse_path(&s[i..]);
                    for p in inner {
                        let mut full = segs.clone();
                        full.extend(p);
                        out.push(full);
                    }
                    // `self` in a group names the prefix itself; `*` and
                    // `as x` are skipped.
                    i += used.max(1);
                    while i < b.len() && b[i] != b',' && b[i] != b'}' && b[i] != b'{' {
                        i += 1;
                    }
                }
            }
        } else {
            break;
        }
    }
    (vec![segs], i)
}

/// An absolute module path for `path` seen in `module`, or `None` when it
/// does not start at `crate`, `super` or `self`.
fn resolve(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = module.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// The longest known module that is a prefix of `path`.
fn module_of(path: &[String], known: &BTreeSet<Vec<String>>) -> Vec<String> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
        .unwrap_or_default()
}

fn joined(m: &[String]) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// The table entry covering `module` in `krate`.
fn entry(krate: &str, module: &[String]) -> Option<&'static Entry> {
    let name = module.join("::");
    LAYERS
        .iter()
        .filter(|e| e.0 == krate)
        .filter(|e| name == e.1 || name.starts_with(&format!("{}::", e.1)))
        .max_by_key(|e| e.1.len())
}

/// What the layering rules find wrong in one crate.
fn violations(krate: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let sources = read_crate(&src);
    let mut known: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    for e in LAYERS.iter().filter(|e| e.0 == krate) {
        known.insert(e.1.split("::").map(str::to_owned).collect());
    }
    let mut bad = Vec::new();
    // parent module → sibling → siblings it imports
    let mut siblings: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for s in &sources {
        let from = entry(krate, &s.module);
        if from.is_none() && !s.module.is_empty() && !s.uses.is_empty() {
            bad.push(format!(
                "{krate}: {} has no rank in LAYERS",
                joined(&s.module)
            ));
        }
        for used in &s.uses {
            let target = module_of(used, &known);
            let common = s
                .module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common < s.module.len() && common < target.len() {
                siblings
                    .entry(s.module[..common].to_vec())
                    .or_default()
                    .entry(s.module[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
            let (Some(from), Some(to)) = (from, entry(krate, &target)) else {
                continue;
            };
            if from.1 != to.1 && to.2 >= from.2 {
                let how = if to.2 == from.2 { "beside" } else { "above" };
                bad.push(format!(
                    "{krate}: {} ({}, rank {}) imports {} ({}, rank {}): a layer {how} it; in {}",
                    joined(&s.module),
                    from.3,
                    from.2,
                    joined(&target),
                    to.3,
                    to.2,
                    s.file.display()
                ));
            }
        }
    }
    for (parent, graph) in &siblings {
        for start in graph.keys() {
            if let Some(c) = cycle(graph, start) {
                bad.push(format!(
                    "{krate}: a cycle between the modules of {}: {}",
                    joined(parent),
                    c.join(" → ")
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

/// A cycle through `from`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(next.clone());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

/// The layer table of docs/architecture.md, rendered from [`LAYERS`].
fn rendered_table() -> String {
    let mut out =
        String::from("| rank | layer | crate | module | holds |\n|---|---|---|---|---|\n");
    let krate = |f: &str| match f {
        "hal" => "talkie-hal",
        "speech" => "talkie-speech",
        _ => "talkie",
    };
    let mut rows: Vec<&Entry> = LAYERS.iter().collect();
    rows.sort_by_key(|e| {
        (
            std::cmp::Reverse(e.0 == "firmware"),
            std::cmp::Reverse(e.2),
            e.0,
            e.1,
        )
    });
    for e in rows {
        out.push_str(&format!(
            "| {} | {} | `{}` | `{}` | {} |\n",
            e.2,
            e.3,
            krate(e.0),
            e.1,
            e.4
        ));
    }
    out
}

#[test]
fn every_crate_keeps_its_layers() {
    let mut bad = Vec::new();
    for krate in ["firmware", "speech", "hal"] {
        bad.extend(violations(krate));
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn the_rules_see_imports_up_beside_and_in_cycles() {
    // The parser and resolver on the shapes the sources use.
    assert_eq!(
        paths_in("use crate::{a::{x, y}, b};  super::c::d()"),
        [
            vec!["crate", "a", "x"],
            vec!["crate", "a", "y"],
            vec!["crate", "b"],
            vec!["super", "c", "d"]
        ]
    );
    assert!(paths_in("pub(super) fn f(x: my_crate::T)").is_empty());
    let m: Vec<String> = vec!["status".into(), "router".into()];
    let p: Vec<String> = vec!["super".into(), "handlers".into(), "f".into()];
    assert_eq!(resolve(&m, &p).unwrap(), ["status", "handlers", "f"]);
    // The table ranks what the rule compares.
    let agent = entry("firmware", &["agent".into(), "link".into()]).unwrap();
    let service = entry("firmware", &["service".into()]).unwrap();
    let ptt = entry("firmware", &["ptt".into()]).unwrap();
    assert!(agent.2 < ptt.2 && ptt.2 < service.2);
    // And the graph is read: the service imports push-to-talk.
    let sources = read_crate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let service_uses: BTreeSet<String> = sources
        .iter()
        .filter(|s| s.module.first().is_some_and(|m| m == "service"))
        .flat_map(|s| s.uses.iter().filter_map(|u| u.first().cloned()))
        .collect();
    assert!(service_uses.contains("ptt"), "{service_uses:?}");
    let mut g = BTreeMap::new();
    g.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    g.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle(&g, "a").unwrap(), ["a", "b", "a"]);
}

#[test]
fn the_architecture_page_shows_the_layer_table() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
    let text = std::fs::read_to_string(&page).unwrap();
    let (begin, end) = ("<!-- layers:begin -->\n", "<!-- layers:end -->");
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        panic!("{}: no {begin:?} … {end:?} block", page.display());
    };
    let want = rendered_table();
    let have = &text[b + begin.len()..e];
    if have != want {
        if std::env::var_os("TALKIE_BLESS").is_some() {
            let new = format!("{}{want}{}", &text[..b + begin.len()], &text[e..]);
            std::fs::write(&page, new).unwrap();
        } else {
            panic!(
                "docs/architecture.md's layer table is not the one in firmware/src/layering.rs; \
                 run `TALKIE_BLESS=1 cargo test -p talkie --lib layering` to rewrite it. Expected:\n{want}"
            );
        }
    }
}
