//! Configuration reload (SIGHUP and `POST /api/v1/reload`): re-read the
//! file with the same overrides, apply what can change while running, and
//! report the rest as waiting for a restart.
//!
//! Applied live: `log.level`, `status.token`, `status.token_file` (the
//! technician token; browsers logged in with the old one are logged out),
//! `agent.token`, `agent.token_file` (the next request carries it; a
//! delivery paused on 401/403 is retried at once). Everything else (audio device, models, GPIO pins, agent URL, …) is held
//! by a running thread or connection and takes effect on the next start;
//! the status page lists those keys under "pending restart".

use crate::base::config::Config;
use serde_json::Value;

/// What a config reload did (`POST /api/v1/reload`, SIGHUP).
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct ReloadReport {
    pub ok: bool,
    /// Why the new file was refused (the running config stays).
    pub error: Option<String>,
    /// Keys whose value differs from the running configuration.
    pub changed: Vec<String>,
    /// Changed keys now in effect.
    pub applied: Vec<String>,
    /// Changed keys that take effect after a restart.
    pub needs_restart: Vec<String>,
}

/// A reload asked for over HTTP; the service answers on the channel.
pub type ReloadRequest = tokio::sync::oneshot::Sender<ReloadReport>;

/// Keys a running service applies at once.
pub const LIVE: &[&str] = &[
    "log.level",
    "status.token",
    "status.token_file",
    "agent.token",
    "agent.token_file",
];

/// Reads the configuration again (the file with the start-up overrides).
pub type Loader =
    std::sync::Arc<dyn Fn() -> Result<Config, crate::base::config::ConfigError> + Send + Sync>;

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        leaf => out.push((prefix.to_owned(), leaf.clone())),
    }
}

fn secret(s: &Option<crate::base::config::Secret>) -> Option<&str> {
    s.as_ref().map(|t| t.expose())
}

/// Keys whose values differ, sorted. Secrets are compared by value (their
/// JSON form is redacted).
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    flatten("", &crate::base::config::redacted(old), &mut a);
    flatten("", &crate::base::config::redacted(new), &mut b);
    let mut keys: Vec<String> = b
        .iter()
        .filter(|(k, v)| a.iter().find(|(ka, _)| ka == k).map(|(_, va)| va) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(
            a.iter()
                .filter(|(k, _)| !b.iter().any(|(kb, _)| kb == k))
                .map(|(k, _)| k.clone()),
        )
        .collect();
    if secret(&old.status.token) != secret(&new.status.token) {
        keys.push("status.token".into());
    }
    if secret(&old.agent.token) != secret(&new.agent.token) {
        keys.push("agent.token".into());
    }
    keys.sort();
    keys.dedup();
    keys
}

/// What a reload from `running` to `new` does: the report, and the
/// configuration now in effect (running + the live keys of `new`).
pub fn plan(running: &Config, new: &Config) -> (ReloadReport, Config) {
    let changed = changed_keys(running, new);
    let (applied, needs_restart): (Vec<String>, Vec<String>) = changed
        .iter()
        .cloned()
        .partition(|k| LIVE.contains(&k.as_str()));
    let mut effective = running.clone();
    effective.log.level = new.log.level.clone();
    effective.status.token = new.status.token.clone();
    effective.status.token_file = new.status.token_file.clone();
    effective.agent.token = new.agent.token.clone();
    effective.agent.token_file = new.agent.token_file.clone();
    (
        ReloadReport {
            ok: true,
            error: None,
            changed,
            applied,
            needs_restart,
        },
        effective,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::config::Secret;

    #[test]
    fn live_keys_apply_and_the_rest_waits_for_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.log.level = "debug".into();
        new.status.token = Some(Secret::new("t0ken"));
        new.audio.device = "hw:2,0".into();
        new.ptt.min_press_ms = 300;
        let (report, effective) = plan(&old, &new);
        assert!(report.ok);
        assert_eq!(
            report.changed,
            [
                "audio.device",
                "log.level",
                "ptt.min_press_ms",
                "status.token"
            ]
        );
        assert_eq!(report.applied, ["log.level", "status.token"]);
        assert_eq!(report.needs_restart, ["audio.device", "ptt.min_press_ms"]);
        assert_eq!(effective.log.level, "debug");
        assert_eq!(
            effective.status.token.as_ref().map(|t| t.expose()),
            Some("t0ken")
        );
        assert_eq!(
            effective.audio.device, old.audio.device,
            "restart-only keys keep running values"
        );
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let c = Config::default();
        let (report, effective) = plan(&c, &c);
        assert!(report.changed.is_empty() && report.applied.is_empty());
        assert_eq!(effective, c);
    }

    #[test]
    fn secrets_compare_by_value() {
        let mut a = Config::default();
        a.agent.token = Some(Secret::new("one"));
        let mut b = a.clone();
        b.agent.token = Some(Secret::new("two"));
        assert_eq!(changed_keys(&a, &b), ["agent.token"]);
        let (report, effective) = plan(&a, &b);
        assert_eq!(report.applied, ["agent.token"], "applied live");
        assert_eq!(
            effective.agent.token.as_ref().map(|t| t.expose()),
            Some("two")
        );
    }
}
