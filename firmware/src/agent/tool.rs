//! `talkie outbox …`: look into the outbox, add transcripts by hand (tests,
//! benchmarks, a technician checking the link), and deliver without the
//! rest of the service.

use super::{new_id, open, AgentError, AgentStats, UtterancePayload};
use crate::agent::outbox::Outbox;
use crate::config::Config;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum OutboxCommand {
    /// Depth, oldest item, recent deliveries and dead letters (JSON).
    Status,
    /// Add transcripts as if they had been spoken.
    Add {
        /// Add each text this many times (numbered).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Deliver to `agent.url` without audio or GPIO.
    Deliver {
        /// Exit 0 once the outbox is empty (else run until SIGINT/SIGTERM).
        #[arg(long)]
        until_empty: bool,
    },
}

/// Run an outbox command.
pub fn run(cfg: &Config, cmd: &OutboxCommand) -> Result<(), AgentError> {
    match cmd {
        OutboxCommand::Status => status(cfg),
        OutboxCommand::Add { repeat, texts } => add(cfg, *repeat, texts),
        OutboxCommand::Deliver { until_empty } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| AgentError::Blocking(e.to_string()))?;
            rt.block_on(deliver(cfg, *until_empty))
        }
    }
}

fn status(cfg: &Config) -> Result<(), AgentError> {
    let opened = Outbox::open(&cfg.outbox.path, cfg.outbox.max_items)?;
    let o = &opened.outbox;
    let now = super::outbox::unix_ms();
    let obj = serde_json::json!({
        "path": cfg.outbox.path.display().to_string(),
        "depth": o.depth()?,
        "max_items": cfg.outbox.max_items,
        "oldest_age_ms": o.oldest_ms()?.map(|t| now.saturating_sub(t)),
        "recovered_from": opened.recovered_from.map(|p| p.display().to_string()),
        "recent_delivered": o.recent_delivered(10)?,
        "dead_letters": o.dead_letters(10)?,
    });
    println!("{obj}");
    Ok(())
}

fn add(cfg: &Config, repeat: u32, texts: &[String]) -> Result<(), AgentError> {
    let mut o = Outbox::open(&cfg.outbox.path, cfg.outbox.max_items)?.outbox;
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let mut items = Vec::new();
    for i in 0..repeat {
        for t in texts {
            let text = if repeat > 1 {
                format!("{t} {i}")
            } else {
                t.clone()
            };
            let p = UtterancePayload {
                id: new_id(),
                device_id: cfg.device.id.clone(),
                text,
                started_at: now.clone(),
                audio_ms: 0,
                speech_ms: 0,
                stt_ms: 0,
                avg_logprob: 0.0,
                firmware_version: crate::VERSION.to_owned(),
            };
            let body =
                serde_json::to_string(&p).map_err(|e| AgentError::Blocking(e.to_string()))?;
            items.push((p.id, body));
        }
    }
    let added = o.enqueue_many(&items)?;
    for (id, _) in &items[..added] {
        println!("{id}");
    }
    if added < items.len() {
        return Err(super::outbox::OutboxError::Full {
            max: cfg.outbox.max_items,
        }
        .into());
    }
    Ok(())
}

async fn deliver(cfg: &Config, until_empty: bool) -> Result<(), AgentError> {
    let url = cfg.agent.url.as_deref().ok_or(AgentError::NoUrl)?;
    let stats = Arc::new(AgentStats::default());
    let (mut link, _handle) = open(cfg, url, Arc::clone(&stats)).await?;
    link.exit_when_empty = until_empty;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(link.run(cancel.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::Blocking(e.to_string()))?;
    tokio::pin!(task);
    tokio::select! {
        _ = &mut task => {}
        _ = tokio::signal::ctrl_c() => { cancel.cancel(); let _ = task.await; }
        _ = term.recv() => { cancel.cancel(); let _ = task.await; }
    }
    stats.log_summary();
    Ok(())
}
