//! The configuration file, overrides, exit codes, `--version`.

use crate::support::*;

#[test]
fn check_config_applies_set_and_env_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "agent.token", "top-secret-token\n");
    let config = write(
        dir.path(),
        "talkie.toml",
        &format!(
            "[device]\nid = \"from-file\"\n[audio]\nrate = 44100\n[agent]\nurl = \"http://127.0.0.1:9\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    let out = run(talkie()
        .arg("--config")
        .arg(&config)
        .env("TALKIE_DEVICE__ID", "from-env")
        .env("TALKIE_AUDIO__RATE", "22050")
        .args(["--set", "audio.rate=16000", "check-config"]));
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    let effective: toml::Table = toml::from_str(&stdout).unwrap();
    assert_eq!(effective["device"]["id"].as_str(), Some("from-env"));
    assert_eq!(effective["audio"]["rate"].as_integer(), Some(16_000));
    assert_eq!(effective["agent"]["token"].as_str(), Some("<redacted>"));
    assert!(!stdout.contains("top-secret-token"));
}

#[test]
fn config_errors_exit_78_and_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[audio]\nrate = 16000\nperiod = 20\n", "talkie.toml:3:10: audio.period: unknown field `period`"),
        ("[audio]\nchannels = \"two\"\n", "talkie.toml:2:12: audio.channels: invalid type: string \"two\", expected u16"),
        ("[audio]\nperiod_ms = 1000\n", "talkie.toml:2:13: audio.period_ms: 1000 is out of range (allowed: 5 to 200)"),
        ("[gpio]\nbackend = \"wiringpi\"\n", "talkie.toml:2:11: gpio.backend: unknown variant `wiringpi`, expected one of `rppal`, `script`, `none`"),
        ("[audio\n", "talkie.toml:1:7: invalid TOML"),
    ];
    for (content, expected) in cases {
        let config = write(dir.path(), "talkie.toml", content);
        for command in ["check-config", "run"] {
            let out = run(talkie().arg("--config").arg(&config).arg(command));
            assert_eq!(out.status.code(), Some(78), "{content}");
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains(expected),
                "expected {expected:?} in {stderr}"
            );
        }
    }
    let out = run(talkie()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("run"));
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr).contains("missing.toml: No such file or directory"));
    let config = write(dir.path(), "talkie.toml", "");
    let out = run(talkie()
        .arg("--config")
        .arg(&config)
        .env("TALKIE_AUDIO__RATE", "3")
        .arg("check-config"));
    assert_eq!(out.status.code(), Some(78));
    assert!(text(&out.stderr)
        .contains("environment variable TALKIE_AUDIO__RATE: audio.rate: 3 is out of range"));
}

#[test]
fn version_names_the_git_revision() {
    let out = run(talkie().arg("--version"));
    assert_eq!(out.status.code(), Some(0));
    let v = text(&out.stdout);
    assert!(
        v.starts_with(concat!("talkie ", env!("CARGO_PKG_VERSION"), " (git ")),
        "{v}"
    );
}

/// Issue 18 row 10: no panic (exit 101) on input the process is handed.
#[test]
fn non_utf8_environment_and_nan_arguments_are_handled() {
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    let out = run(talkie()
        .env("FOO", bad)
        .env("TALKIE_DEVICE__ID", bad)
        .args([
            "--config",
            "/nonexistent.toml",
            "--set",
            "device.id=x",
            "check-config",
        ]));
    assert_ne!(out.status.code(), Some(101), "no panic");
    for wait in ["NaN", "inf", "-1"] {
        let out = run(talkie().args(["health", &format!("--wait={wait}")]));
        assert_eq!(out.status.code(), Some(64), "--wait {wait}");
        assert!(text(&out.stderr).contains("--wait"));
    }
}
