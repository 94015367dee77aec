//! The agent contract (docs/agent-api.md) as types both sides use: the
//! firmware's delivery link sends them, the development mock agent
//! (`talkie-mock-agent`) reads them.

/// Path of the delivery endpoint, joined to `agent.url`.
pub const UTTERANCES_PATH: &str = "/v1/utterances";

/// Header carrying the utterance id; a repeat of a delivered id is a
/// duplicate the agent acknowledges without acting on it again.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The JSON body of `POST /v1/utterances`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct UtterancePayload {
    /// UUIDv7: time-ordered, also the `Idempotency-Key`.
    pub id: String,
    pub device_id: String,
    pub text: String,
    /// RFC 3339 UTC time of the press.
    pub started_at: String,
    pub audio_ms: u64,
    pub speech_ms: u64,
    pub stt_ms: u64,
    pub avg_logprob: f32,
    pub firmware_version: String,
}
