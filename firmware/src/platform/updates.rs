#![cfg_attr(not(test), deny(clippy::indexing_slicing))]
//! The update system's view of this board, for the technician's page:
//! RAUC's booted slot, its boot status and the bundle version installed
//! in it (`rauc status --output-format=json`), and Mender's current
//! artifact (`/etc/mender/artifact_info`, else `mender-update
//! show-artifact`). Read-only, every tool run with a deadline and bounded
//! output ([`crate::base::tool`]); a system without the tool shows nothing.
//!
//! Read at start and every [`EVERY`] after: RAUC's boot status turns from
//! "pending" to "good" when a health hook marks the slot, usually minutes
//! after talkie itself became ready.

use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How long one tool may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the view is read again.
pub const EVERY: Duration = Duration::from_secs(300);
/// Most bytes of a tool's output read.
const MAX_OUTPUT: u64 = 256 * 1024;
/// Slots listed, at most.
const MAX_SLOTS: usize = 16;
/// Longest string kept from a tool (names, versions, errors).
const MAX_TEXT: usize = 200;
/// Mender's record of the installed artifact (under the board root).
pub const MENDER_ARTIFACT_INFO: &str = "etc/mender/artifact_info";

/// One RAUC slot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RaucSlot {
    pub name: String,
    pub class: Option<String>,
    /// `booted`, `active` or `inactive`.
    pub state: Option<String>,
    /// `good`, `bad` or `pending` (the bootloader's view).
    pub boot_status: Option<String>,
    /// The version of the bundle last installed into it.
    pub bundle_version: Option<String>,
}

/// What `rauc status` says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rauc {
    pub compatible: Option<String>,
    /// The slot running now (the one whose state is `booted`).
    pub booted_slot: Option<String>,
    pub booted_bundle_version: Option<String>,
    pub booted_boot_status: Option<String>,
    /// The slot the bootloader starts next, when it is not the booted one
    /// (an update installed and waiting for a reboot, or a fallback).
    pub next_boot: Option<String>,
    pub slots: Vec<RaucSlot>,
}

/// The update systems found and what they say; `None` where the tool is
/// absent, an error string where it failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateState {
    pub rauc: Option<Rauc>,
    pub rauc_error: Option<String>,
    pub mender_artifact: Option<String>,
    pub mender_error: Option<String>,
    /// When this was read (Unix ms).
    pub checked_ms: u64,
}

/// The string at JSON pointer `at`, cut to [`MAX_TEXT`].
fn text(v: &Value, at: &str) -> Option<String> {
    v.pointer(at)
        .and_then(Value::as_str)
        .map(|s| s.chars().take(MAX_TEXT).collect())
}

/// Parse `rauc status --output-format=json`.
pub fn parse_rauc(json: &[u8]) -> Result<Rauc, String> {
    let v: Value =
        serde_json::from_slice(json).map_err(|e| format!("rauc status: not JSON ({e})"))?;
    let slots: Vec<RaucSlot> = v
        .get("slots")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|m| m.iter())
        .take(MAX_SLOTS)
        .map(|(name, s)| RaucSlot {
            name: name.chars().take(MAX_TEXT).collect(),
            class: text(s, "/class"),
            state: text(s, "/state"),
            boot_status: text(s, "/boot_status"),
            bundle_version: text(s, "/slot_status/bundle/version"),
        })
        .collect();
    if v.get("slots").is_none() {
        return Err("rauc status: no \"slots\" in its answer".to_owned());
    }
    let booted = slots.iter().find(|s| s.state.as_deref() == Some("booted"));
    let primary = text(&v, "/boot_primary");
    Ok(Rauc {
        compatible: text(&v, "/compatible"),
        booted_slot: booted.map(|s| s.name.clone()),
        booted_bundle_version: booted.and_then(|s| s.bundle_version.clone()),
        booted_boot_status: booted.and_then(|s| s.boot_status.clone()),
        next_boot: primary.filter(|p| Some(p) != booted.map(|s| &s.name)),
        slots,
    })
}

/// The artifact name in Mender's `artifact_info` (`artifact_name=…`).
pub fn parse_mender(info: &str) -> Option<String> {
    info.lines()
        .filter_map(|l| l.trim().strip_prefix("artifact_name="))
        .map(|n| n.trim().chars().take(MAX_TEXT).collect::<String>())
        .find(|n| !n.is_empty())
}

fn short(e: impl std::fmt::Display) -> String {
    e.to_string().chars().take(MAX_TEXT).collect()
}

/// Read the update systems' view now. `root` is the board root
/// (`board.root`) for Mender's file; the tools run from `PATH`.
pub async fn read(root: &Path) -> UpdateState {
    read_with(root, "rauc", "mender-update").await
}

async fn read_with(root: &Path, rauc: &str, mender: &str) -> UpdateState {
    let mut st = UpdateState {
        checked_ms: crate::base::telemetry::unix_ms(),
        ..UpdateState::default()
    };
    match crate::base::tool::run(
        rauc,
        &["status", "--output-format=json"],
        TOOL_TIMEOUT,
        MAX_OUTPUT,
    )
    .await
    {
        Ok(out) if out.success => match parse_rauc(&out.stdout) {
            Ok(r) => st.rauc = Some(r),
            Err(e) => st.rauc_error = Some(short(e)),
        },
        Ok(out) => {
            st.rauc_error = Some(short(format!(
                "rauc status: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
        Err(crate::base::tool::ToolError::Absent(_)) => {}
        Err(e) => st.rauc_error = Some(short(e)),
    }
    let file = crate::platform::board::read_small(&root.join(MENDER_ARTIFACT_INFO));
    if let Some(name) = file.as_deref().and_then(parse_mender) {
        st.mender_artifact = Some(name);
    } else {
        match crate::base::tool::run(mender, &["show-artifact"], TOOL_TIMEOUT, MAX_OUTPUT).await {
            Ok(out) if out.success => {
                st.mender_artifact = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .map(|l| l.chars().take(MAX_TEXT).collect());
            }
            Ok(out) => {
                st.mender_error = Some(short(format!("{mender} show-artifact: {}", out.status)))
            }
            Err(crate::base::tool::ToolError::Absent(_)) => {}
            Err(e) => st.mender_error = Some(short(e)),
        }
    }
    st
}

/// Keep `slot` current until `cancel`: read now, then every [`EVERY`].
pub async fn run(
    root: std::path::PathBuf,
    slot: std::sync::Arc<std::sync::RwLock<Option<UpdateState>>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let st = tokio::select! {
            st = read(&root) => st,
            () = cancel.cancelled() => return,
        };
        if st.rauc.is_some()
            || st.mender_artifact.is_some()
            || st.rauc_error.is_some()
            || st.mender_error.is_some()
        {
            tracing::debug!(?st, "update system read");
        }
        if let Ok(mut g) = slot.write() {
            *g = Some(st);
        }
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `rauc status --output-format=json` prints (RAUC 1.x), an
    /// update installed into B and waiting for the reboot.
    const RAUC: &str = r#"{
      "compatible": "talkie-kiosk-pi4", "variant": "", "booted": "A", "boot_primary": "rootfs.1",
      "slots": [
        {"rootfs.0": {"class": "rootfs", "device": "/dev/mmcblk0p2", "type": "ext4", "bootname": "A",
          "state": "booted", "parent": null, "mountpoint": "/", "boot_status": "good",
          "slot_status": {"bundle": {"compatible": "talkie-kiosk-pi4", "version": "2026.11.2"}}}},
        {"rootfs.1": {"class": "rootfs", "device": "/dev/mmcblk0p3", "type": "ext4", "bootname": "B",
          "state": "inactive", "parent": null, "mountpoint": null, "boot_status": "good",
          "slot_status": {"bundle": {"compatible": "talkie-kiosk-pi4", "version": "2026.12.0"}}}}
      ]}"#;

    #[test]
    fn rauc_status_gives_the_booted_slot_its_bundle_and_the_next_boot() {
        let r = parse_rauc(RAUC.as_bytes()).unwrap();
        assert_eq!(r.compatible.as_deref(), Some("talkie-kiosk-pi4"));
        assert_eq!(r.booted_slot.as_deref(), Some("rootfs.0"));
        assert_eq!(r.booted_bundle_version.as_deref(), Some("2026.11.2"));
        assert_eq!(r.booted_boot_status.as_deref(), Some("good"));
        assert_eq!(r.next_boot.as_deref(), Some("rootfs.1"));
        assert_eq!(r.slots.len(), 2);
        assert_eq!(r.slots[1].bundle_version.as_deref(), Some("2026.12.0"));
        assert!(parse_rauc(b"not json").is_err());
        assert!(parse_rauc(b"{}").is_err());
    }

    #[test]
    fn mender_artifact_info_gives_the_artifact_name() {
        let info = "device_type=raspberrypi4\nartifact_name=talkie-2026.12.0\n";
        assert_eq!(parse_mender(info).as_deref(), Some("talkie-2026.12.0"));
        assert_eq!(parse_mender("artifact_name=\n"), None);
    }

    /// The real read with stand-in tools: a `rauc` script answering the
    /// JSON above, Mender's file in a fake root; absent tools leave
    /// nothing, a failing one an error.
    #[tokio::test]
    async fn the_view_comes_from_the_tools_and_files_found_and_is_empty_without_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p.to_string_lossy().into_owned()
        };
        let json = dir.path().join("rauc.json");
        std::fs::write(&json, RAUC).unwrap();
        let rauc = script(
            "rauc",
            &format!(
                "[ \"$1 $2\" = 'status --output-format=json' ] && cat '{}'",
                json.display()
            ),
        );
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc/mender")).unwrap();
        std::fs::write(
            root.join(MENDER_ARTIFACT_INFO),
            "artifact_name=talkie-2026.12.0\n",
        )
        .unwrap();

        let st = read_with(&root, &rauc, "talkie-no-such-mender").await;
        assert_eq!(
            st.rauc.unwrap().booted_bundle_version.as_deref(),
            Some("2026.11.2")
        );
        assert_eq!(st.mender_artifact.as_deref(), Some("talkie-2026.12.0"));
        assert_eq!((st.rauc_error, st.mender_error), (None, None));

        let bare = dir.path().join("bare");
        let none = read_with(&bare, "talkie-no-such-rauc", "talkie-no-such-mender").await;
        assert_eq!(
            (none.rauc, none.mender_artifact, none.rauc_error.clone()),
            (None, None, None)
        );

        let failing = script("rauc-broken", "echo 'D-Bus: no service' >&2; exit 1");
        let mender = script("mender-update", "echo talkie-2026.11.2");
        let st = read_with(&bare, &failing, &mender).await;
        assert!(st.rauc_error.unwrap().contains("D-Bus: no service"));
        assert_eq!(st.mender_artifact.as_deref(), Some("talkie-2026.11.2"));
    }
}
