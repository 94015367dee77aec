use super::*;

fn load_text(text: &str, sets: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let overrides = Overrides {
        sets: sets.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        credentials_dir: None,
    };
    load_str(Path::new("/etc/talkie/talkie.toml"), text, &overrides)
}

fn one_problem(r: Result<Loaded, ConfigError>) -> Problem {
    match r {
        Err(ConfigError::Invalid(p)) => {
            assert_eq!(p.len(), 1, "{p:?}");
            p[0].clone()
        }
        other => panic!("expected one problem, got {other:?}"),
    }
}

#[test]
fn empty_file_gives_defaults() {
    let l = load_text("", &[], &[]).unwrap();
    assert_eq!(l.config, Config::default());
    assert_eq!(l.config.audio.preroll_ms, 500);
    assert_eq!(l.config.audio.max_utterance_s, 30);
    // Issue 31: the tier is chosen on the device unless configured.
    assert_eq!(l.config.stt.model, SttModel::Auto);
}

#[test]
fn unknown_key_is_located() {
    let p = one_problem(load_text("[audio]\nrate = 16000\nrat = 3\n", &[], &[]));
    assert_eq!(p.key, "audio.rat");
    assert!(p.message.contains("unknown field `rat`"), "{}", p.message);
    assert!(
        p.message.contains("rate"),
        "lists allowed keys: {}",
        p.message
    );
    assert_eq!(
        p.origin,
        Origin::File {
            path: "/etc/talkie/talkie.toml".into(),
            line: 3,
            column: 7
        }
    );
}

#[test]
fn unknown_section_is_rejected() {
    let p = one_problem(load_text("[audoi]\nrate = 1\n", &[], &[]));
    assert_eq!(p.key, "audoi");
    assert!(p.message.contains("unknown field `audoi`"), "{}", p.message);
}

#[test]
fn wrong_type_is_located() {
    let p = one_problem(load_text("[audio]\n\nrate = \"fast\"\n", &[], &[]));
    assert_eq!(p.key, "audio.rate");
    assert!(p.message.contains("expected u32"), "{}", p.message);
    assert!(p
        .to_string()
        .starts_with("/etc/talkie/talkie.toml:3:8: audio.rate: "));
}

#[test]
fn out_of_range_names_the_allowed_range() {
    let p = one_problem(load_text("[audio]\nchannels = 6\n", &[], &[]));
    assert_eq!(p.key, "audio.channels");
    assert_eq!(p.message, "6 is out of range (allowed: 1 to 2)");
    assert!(matches!(
        p.origin,
        Origin::File {
            line: 2,
            column: 12,
            ..
        }
    ));
}

#[test]
fn bad_enum_lists_variants() {
    let p = one_problem(load_text("[gpio]\nbackend = \"spi\"\n", &[], &[]));
    assert!(p.message.contains("`rppal`, `script`"), "{}", p.message);
}

#[test]
fn syntax_error_has_line_and_column() {
    match load_text("[audio]\nrate = = 3\n", &[], &[]) {
        Err(ConfigError::Syntax { line, column, .. }) => assert_eq!((line, column), (2, 8)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn set_and_env_override_with_precedence() {
    let l = load_text(
        "[audio]\nrate = 44100\ndevice = \"default\"\n",
        &["audio.rate=16000", "audio.device=hw:1,0"],
        &[
            ("TALKIE_AUDIO__RATE", "22050"),
            ("TALKIE_DEVICE__ID", "kiosk-7"),
        ],
    )
    .unwrap();
    assert_eq!(l.config.audio.rate, 16000, "--set beats env");
    assert_eq!(
        l.config.audio.device, "hw:1,0",
        "non-TOML values are strings"
    );
    assert_eq!(l.config.device.id, "kiosk-7");
}

#[test]
fn bad_override_value_names_the_argument() {
    let p = one_problem(load_text("", &["audio.period_ms=1"], &[]));
    assert_eq!(p.origin, Origin::Set("audio.period_ms=1".into()));
    let p = one_problem(load_text("", &[], &[("TALKIE_AUDIO__BOGUS", "1")]));
    assert_eq!(p.origin, Origin::Env("TALKIE_AUDIO__BOGUS".into()));
    assert!(matches!(
        load_text("", &["audio"], &[]),
        Err(ConfigError::Override { .. })
    ));
}

#[test]
fn missing_required_file_points_at_backend_section() {
    let p = one_problem(load_text("[audio]\nbackend = \"file\"\n", &[], &[]));
    assert_eq!(p.key, "audio.file");
    assert!(p.message.contains("must be set"), "{}", p.message);
    assert!(matches!(p.origin, Origin::File { line: 1, .. }));
}

#[test]
fn secrets_come_from_files_and_credentials_and_are_redacted() {
    let dir = std::env::temp_dir().join(format!("talkie-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agent-token"), "s3cret-agent\n").unwrap();
    std::fs::write(dir.join("status.tok"), "s3cret-status").unwrap();
    let overrides = Overrides {
        sets: vec![format!(
            "status.token_file={}",
            dir.join("status.tok").display()
        )],
        env: vec![],
        credentials_dir: Some(dir.clone()),
    };
    let l = load_str(Path::new("t.toml"), "", &overrides).unwrap();
    assert_eq!(
        l.config.agent.token.as_ref().unwrap().expose(),
        "s3cret-agent"
    );
    assert_eq!(
        l.config.status.token.as_ref().unwrap().expose(),
        "s3cret-status"
    );
    let printed = toml::to_string(&l.config).unwrap();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains(REDACTED));
    assert!(!format!("{:?}", l.config).contains("s3cret"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn several_problems_are_all_reported() {
    let e = load_text("[audio]\nrate = 1\nchannels = 3\n", &[], &[]).unwrap_err();
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["audio.rate", "audio.channels"]);
}

#[test]
fn stt_precision_and_threads_take_auto_or_a_value() {
    let c = load_text("", &[], &[]).unwrap().config;
    assert_eq!(c.stt.precision, Precision::Auto);
    assert_eq!(c.stt.threads, Threads::Auto);
    let c = load_text("[stt]\nthreads = 3\nprecision = \"int8\"\n", &[], &[])
        .unwrap()
        .config;
    assert_eq!(
        (c.stt.precision, c.stt.threads),
        (Precision::Int8, Threads::Fixed(3))
    );
    let c = load_text(
        "",
        &["stt.threads=auto"],
        &[("TALKIE_STT__PRECISION", "fp32")],
    )
    .unwrap()
    .config;
    assert_eq!(
        (c.stt.precision, c.stt.threads),
        (Precision::Fp32, Threads::Auto)
    );
    let p = one_problem(load_text("[stt]\nthreads = \"many\"\n", &[], &[]));
    assert!(p.message.contains("auto"), "{p:?}");
    let p = one_problem(load_text("[stt]\nthreads = 0\n", &[], &[]));
    assert_eq!(p.key, "stt.threads");
    // Printed back as it is written.
    let text = toml::to_string(&load_text("", &[], &[]).unwrap().config).unwrap();
    assert!(text.contains("threads = \"auto\"") && text.contains("precision = \"auto\""));
}

#[test]
fn token_and_config_files_are_bounded_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 5000]).unwrap();
    let err = read_bounded(&big, MAX_TOKEN_BYTES).unwrap_err();
    assert!(err.to_string().contains("larger than 4096"), "{err}");
    assert!(read_bounded(Path::new("/dev/zero"), MAX_TOKEN_BYTES)
        .unwrap_err()
        .to_string()
        .contains("not a regular file"));
    // A FIFO with no writer: refused at once, not a hang.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(read_bounded(&fifo, MAX_TOKEN_BYTES).is_err());
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, format!("[status]\ntoken_file = {:?}\n", "/dev/zero")).unwrap();
    let err = load(&cfg, &Overrides::default()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(load(&fifo, &Overrides::default()).is_err());
}

#[test]
fn a_huge_bad_value_is_not_echoed_whole() {
    let huge = "x".repeat(1 << 20);
    let e = load_text(&format!("[ptt]\nmode = \"{huge}\"\n"), &[], &[]).unwrap_err();
    let shown = e.to_string();
    assert!(shown.len() < 2_000, "{} bytes", shown.len());
    assert!(shown.contains("ptt.mode"), "{shown}");
    let e = load_text("", &[&format!("ptt.mode={huge}")], &[]).unwrap_err();
    assert!(e.to_string().len() < 2_000);
}

/// Issue 28 row 8: a token with a newline passed and every delivery then
/// failed to build its header, forever. Now refused at load, with the
/// reason and without the token.
#[test]
fn tokens_with_control_characters_are_refused_with_the_reason() {
    let e = load_text(
        "[agent]\nurl = \"http://10.0.0.5\"\ntoken = \"abc\\ndef\"\n[status]\ntoken = \"ok-token\"\n",
        &[],
        &[],
    )
    .unwrap_err();
    let p = e.problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "agent.token");
    assert!(
        p[0].message.contains("control character"),
        "{}",
        p[0].message
    );
    assert!(!p[0].message.contains("abc"), "the token is not shown");
    let e = load_text("[status]\ntoken = \"two words\"\n", &[], &[]).unwrap_err();
    assert_eq!(e.problems()[0].key, "status.token");
    assert!(load_text("[agent]\ntoken = \"A-z0.9_~+/=\"\n", &[], &[]).is_ok());
}

/// Issue 28 row 4: a password in `agent.url` is redacted wherever the
/// configuration is printed (check-config, the status API, the bundle).
#[test]
fn a_password_in_the_agent_url_is_never_printed() {
    let c = load_text(
        "[agent]\nurl = \"https://kiosk:hunter2@agent.example/api\"\n",
        &[],
        &[],
    )
    .unwrap()
    .config;
    let printed = toml::to_string(&c).unwrap();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("kiosk:%3Credacted%3E@agent.example/api"),
        "{printed}"
    );
    let json = crate::base::config::redacted(&c).to_string();
    assert!(!json.contains("hunter2"), "{json}");
    assert_eq!(
        c.agent.url.as_deref(),
        Some("https://kiosk:hunter2@agent.example/api")
    );
}
