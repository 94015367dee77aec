//! Secrets in the configuration: never printed, never logged.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A token or password. `Debug`, `Display` and `Serialize` show `"<redacted>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What a redacted secret looks like in `check-config` and logs.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// `url` with its password (if any) replaced by [`REDACTED`]; text that is
/// not a URL is returned as it is.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            // Only a URL that cannot have a password fails here.
            if u.set_password(Some(REDACTED)).is_err() {
                return REDACTED.to_owned();
            }
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `agent.url` as printed: its password redacted.
pub(super) fn serialize_url<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&redact_url(u)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_url("https://kiosk:hunter2@agent.example:8443/api"),
            "https://kiosk:%3Credacted%3E@agent.example:8443/api"
        );
        assert_eq!(redact_url("http://10.0.0.5:9000"), "http://10.0.0.5:9000");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
