//! The update systems' hooks (`board/update-hooks/`) against the real
//! tools in a throwaway root (issue 32): Debian's `rauc` 1.8 as a service on
//! a private D-Bus system bus with a `custom` bootloader backend kept in
//! files, its two slots file-backed; `talkie-mark-good.service` run as
//! systemd runs a oneshot (ExecStart, then ExecStartPost, ExecStopPost with
//! `$SERVICE_RESULT`); SWUpdate's hook with the real `fw_setenv` on a
//! file-backed U-Boot environment; Mender's state script. A healthy kiosk
//! commits the release; one that never becomes ready is marked bad and
//! reboots. Missing tools fail the test unless `TALKIE_SKIP_UPDATE_TOOLS=1`
//! says to skip (`make test` installs `rauc`, `dbus-daemon` and `libubootenv-tool`).

use crate::service::{in_process_config, start};
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Children killed when the test ends, passed or not.
struct Reaper(Vec<Child>);
impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The throwaway root: `bin/` first on PATH (a `systemctl` that records a
/// reboot), the RAUC system configuration with two file-backed slots and
/// a custom bootloader backend that keeps its state in files.
struct Root {
    dir: PathBuf,
    path: String,
}

impl Root {
    fn new(dir: &Path) -> Self {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let systemctl = write(
            &bin,
            "systemctl",
            &format!(
                "#!/bin/sh\necho \"$*\" >> {:?}\n",
                dir.join("systemctl.log")
            ),
        );
        let backend = write(
            dir,
            "bootloader.sh",
            &format!(
                "#!/bin/sh\n# RAUC's custom bootloader backend, kept in files.\nd={:?}\n\
                 echo \"$*\" >> \"$d/bootloader.log\"\n\
                 case \"$1\" in\n\
                 get-primary) cat \"$d/primary\" ;;\n\
                 set-primary) echo \"$2\" > \"$d/primary\" ;;\n\
                 get-state) cat \"$d/state.$2\" 2>/dev/null || echo good ;;\n\
                 set-state) echo \"$3\" > \"$d/state.$2\" ;;\n\
                 get-current) echo A ;;\n\
                 *) exit 1 ;;\nesac\n",
                dir
            ),
        );
        for f in [&systemctl, &backend] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.join("primary"), "A\n").unwrap();
        for img in ["rootfs0.img", "rootfs1.img"] {
            std::fs::write(dir.join(img), vec![0u8; 64 * 1024]).unwrap();
        }
        std::fs::create_dir_all(dir.join("rauc-data")).unwrap();
        write(
            dir,
            "system.conf",
            &format!(
                "[system]\ncompatible=talkie-kiosk-test\nbootloader=custom\ndata-directory={}\n\
                 [handlers]\nbootloader-custom-backend={}\n\
                 [slot.rootfs.0]\ndevice={}\ntype=raw\nbootname=A\n\
                 [slot.rootfs.1]\ndevice={}\ntype=raw\nbootname=B\n",
                dir.join("rauc-data").display(),
                backend.display(),
                dir.join("rootfs0.img").display(),
                dir.join("rootfs1.img").display(),
            ),
        );
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Self {
            dir: dir.to_owned(),
            path,
        }
    }

    /// A private system bus and `rauc service` on it, booted from slot A.
    fn start_rauc(&self, dbus: &Path, rauc: &Path) -> Reaper {
        let socket = self.dir.join("bus");
        write(
            &self.dir,
            "bus.conf",
            &format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
                 <allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n",
                socket.display()
            ),
        );
        let bus = Command::new(dbus)
            .arg(format!(
                "--config-file={}",
                self.dir.join("bus.conf").display()
            ))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut reaper = Reaper(vec![bus]);
        wait_until(|| socket.exists(), "the D-Bus socket");
        let log = std::fs::File::create(self.dir.join("rauc-service.log")).unwrap();
        let service = Command::new(rauc)
            .arg(format!("--conf={}", self.dir.join("system.conf").display()))
            .args(["service", "--override-boot-slot=A"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        reaper.0.push(service);
        // Ready once `rauc status` answers through the bus.
        wait_until(
            || {
                Command::new(rauc)
                    .arg("status")
                    .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
            "rauc service on the bus",
        );
        reaper
    }

    fn bus(&self) -> String {
        format!("unix:path={}", self.dir.join("bus").display())
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// One shell line of a hook, `/usr/bin/talkie` being the built binary
    /// with `config`, in this root's PATH and bus.
    fn sh(&self, line: &str, config: &Path, env: &[(&str, &str)]) -> bool {
        let line = line.replace("/usr/bin/talkie", env!("CARGO_BIN_EXE_talkie"));
        let out = Command::new("sh")
            .args(["-c", &line])
            .env("PATH", &self.path)
            .env("TALKIE_CONFIG", config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        eprintln!(
            "$ {line}\n{}{}→ {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            out.status
        );
        out.status.success()
    }
}

/// Poll `ok` every 50 ms for up to 30 s (a bound, not a timing assertion).
fn wait_until(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "{what} never came");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `talkie-mark-good.service` as systemd runs a oneshot: ExecStart, then
/// ExecStartPost if it succeeded, then ExecStopPost with
/// `$SERVICE_RESULT`. `wait` replaces the unit's 180 s.
fn run_mark_good_unit(root: &Root, config: &Path, wait: &str) {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../board/update-hooks/talkie-mark-good.service"),
    )
    .unwrap();
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .replace("--wait 180", &format!("--wait {wait}"))
    };
    let ok =
        root.sh(&line("ExecStart="), config, &[]) && root.sh(&line("ExecStartPost="), config, &[]);
    let result = if ok { "success" } else { "exit-code" };
    let stop = line("ExecStopPost=");
    // systemd runs `/bin/sh -c '…'`: take the quoted script.
    let script = stop
        .split_once("-c '")
        .and_then(|(_, s)| s.strip_suffix('\''))
        .unwrap_or(&stop);
    root.sh(script, config, &[("SERVICE_RESULT", result)]);
}

/// GET `path` on `addr`: status code and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A kiosk's configuration for `talkie health`: only where it listens.
fn health_config(dir: &Path, addr: std::net::SocketAddr) -> PathBuf {
    write(
        dir,
        "health.toml",
        &format!("[status]\nlisten = \"{addr}\"\n"),
    )
}

/// RAUC: the unit against a fresh root and `rauc service`; returns the
/// root to look at.
fn rauc_flow(rauc: &Path, dbus: &Path, config: &Path, wait: &str) -> (tempfile::TempDir, Root) {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let _service = root.start_rauc(dbus, rauc);
    run_mark_good_unit(&root, config, wait);
    (dir, root)
}

/// SWUpdate: a U-Boot environment in a file (the real `fw_setenv` and
/// `fw_printenv`), left by an install as U-Boot's bootcount rollback
/// expects it, then the shipped hook. Returns the environment afterwards.
fn swupdate_flow(config: &Path, wait: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let env_file = dir.path().join("uboot.env");
    std::fs::write(&env_file, vec![0xffu8; 0x4000]).unwrap();
    let fw_config = write(
        dir.path(),
        "fw_env.config",
        &format!("{} 0x0000 0x4000\n", env_file.display()),
    );
    // The board's default environment, as U-Boot was built with it.
    let defenv = write(
        dir.path(),
        "u-boot-initial-env",
        "bootcmd=run distro_bootcmd\nbootlimit=3\n",
    );
    let fw = fw_config.display().to_string();
    let fw_env = [("FW_ENV_CONFIG", fw.as_str())];
    let installed = format!(
        "fw_setenv -c \"$FW_ENV_CONFIG\" -f {:?} upgrade_available 1 && \
         fw_setenv -c \"$FW_ENV_CONFIG\" bootcount 2 && fw_setenv -c \"$FW_ENV_CONFIG\" ustate 1",
        defenv
    );
    assert!(root.sh(&installed, config, &fw_env));
    let hook = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/update-hooks/swupdate-confirm.sh"),
    )
    .unwrap()
    .replace("--wait 180", &format!("--wait {wait}"));
    root.sh(&hook, config, &fw_env);
    let out = Command::new("fw_printenv")
        .args(["-c", &fw])
        .output()
        .unwrap();
    let mut env: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            ["upgrade_available=", "bootcount=", "ustate="]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_owned)
        .collect();
    env.sort();
    (env.join(" "), root.read("systemctl.log").trim().to_owned())
}

/// Mender: the state script's name is one Mender runs (`ArtifactCommit`
/// state, `Enter`, ordering number), and its exit status.
fn mender_flow(config: &Path, wait: &str) -> bool {
    let name = "ArtifactCommit_Enter_00_talkie_health";
    let pattern = |n: &str| {
        let parts: Vec<&str> = n.splitn(4, '_').collect();
        parts.len() >= 3
            && parts[0] == "ArtifactCommit"
            && ["Enter", "Leave", "Error"].contains(&parts[1])
            && parts[2].len() == 2
            && parts[2].chars().all(|c| c.is_ascii_digit())
    };
    assert!(pattern(name));
    let dir = tempfile::tempdir().unwrap();
    let root = Root::new(dir.path());
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../board/update-hooks")
            .join(name),
    )
    .unwrap()
    .replace("--wait 180", &format!("--wait {wait}"));
    root.sh(&script, config, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_systems_commit_a_healthy_release_and_roll_back_a_never_ready_one() {
    let Some(t) = tools_or_skip(
        &["rauc", "dbus-daemon", "fw_setenv", "fw_printenv"],
        "TALKIE_SKIP_UPDATE_TOOLS",
        "rauc, dbus-daemon and libubootenv-tool",
    ) else {
        return;
    };
    let (rauc, dbus) = (t[0].clone(), t[1].clone());

    // A healthy release and one whose service never becomes ready (its
    // ALSA microphone does not exist: the service stays up, degraded,
    // reopening it).
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let good = start(in_process_config(
        a.path(),
        "dev_00.wav",
        "update-test-token-0123",
    ))
    .await
    .unwrap();
    let mut cfg = in_process_config(b.path(), "dev_00.wav", "update-test-token-0123");
    cfg.audio.backend = talkie::base::config::AudioBackend::Alsa;
    cfg.audio.device = "hw:97,0".to_owned();
    let bad = start(cfg).await.unwrap();
    let good_cfg = health_config(a.path(), good.status_addr());
    let bad_cfg = health_config(b.path(), bad.status_addr());

    let (r, d) = (rauc.clone(), dbus.clone());
    let (gc, bc) = (good_cfg.clone(), bad_cfg.clone());
    let results = tokio::task::spawn_blocking(move || {
        let rauc_good = rauc_flow(&r, &d, &gc, "120");
        let rauc_bad = rauc_flow(&r, &d, &bc, "3");
        let sw_good = swupdate_flow(&gc, "120");
        let sw_bad = swupdate_flow(&bc, "3");
        let mender = (mender_flow(&gc, "120"), mender_flow(&bc, "3"));
        (rauc_good, rauc_bad, sw_good, sw_bad, mender)
    })
    .await
    .unwrap();
    let (code, body) = get(bad.status_addr(), "/readyz").await;
    assert_eq!(code, 503, "up but not ready: {body}");
    for h in [good, bad] {
        h.shutdown();
        h.wait().await.unwrap();
    }
    let ((_g, rauc_good), (_b, rauc_bad), sw_good, sw_bad, mender) = results;

    // RAUC: the healthy slot is marked good and nothing reboots; the other
    // is marked bad and the board reboots into the other slot.
    assert_eq!(
        rauc_good.read("state.A").trim(),
        "good",
        "{}",
        rauc_good.read("bootloader.log")
    );
    assert!(rauc_good
        .read("bootloader.log")
        .contains("set-state A good"));
    assert_eq!(rauc_good.read("systemctl.log"), "", "no reboot");
    assert_eq!(
        rauc_bad.read("state.A").trim(),
        "bad",
        "{}",
        rauc_bad.read("bootloader.log")
    );
    assert!(rauc_bad.read("bootloader.log").contains("set-state A bad"));
    assert_eq!(rauc_bad.read("systemctl.log").trim(), "reboot");

    // SWUpdate: healthy → the upgrade flags cleared; not → left for U-Boot's
    // bootlimit, and a reboot.
    assert_eq!(
        sw_good,
        (
            "bootcount=0 upgrade_available=0 ustate=0".to_owned(),
            String::new()
        )
    );
    assert_eq!(
        sw_bad,
        (
            "bootcount=2 upgrade_available=1 ustate=1".to_owned(),
            "reboot".to_owned()
        )
    );

    // Mender: the state script commits (exit 0) only the healthy release.
    assert_eq!(mender, (true, false));
}
