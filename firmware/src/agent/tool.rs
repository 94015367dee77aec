//! `talkie outbox …`: look into the outbox, add transcripts by hand (tests,
//! benchmarks, a technician checking the link), and deliver without the
//! rest of the service.

use super::{new_id, open, AgentError, AgentStats, UtterancePayload};
use crate::agent::outbox::Outbox;
use crate::base::config::Config;
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
    /// Transcripts moved aside (refused by the agent, failed on too often,
    /// too old): list them, send them again, or delete them.
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// The newest dead letters, one JSON object per line.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Put dead letters back at the end of the queue (same id, so the
    /// agent deduplicates); the running service sends them within a second.
    Retry(DeadLetterPick),
    /// Delete dead letters for good.
    Drop(DeadLetterPick),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeadLetterPick {
    /// The dead letter's id (the transcript's id).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
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
                .map_err(AgentError::Runtime)?;
            rt.block_on(deliver(cfg, *until_empty))
        }
        OutboxCommand::DeadLetter(cmd) => dead_letter(cfg, cmd),
    }
}

fn dead_letter(cfg: &Config, cmd: &DeadLetterCommand) -> Result<(), AgentError> {
    let mut o = Outbox::open(&cfg.outbox.path, cfg.outbox.max_items)?.outbox;
    match cmd {
        DeadLetterCommand::List { limit } => {
            for d in o.dead_letters(*limit)? {
                println!("{}", serde_json::to_string(&d)?);
            }
            eprintln!("{} dead letters kept", o.dead_count()?);
        }
        DeadLetterCommand::Retry(pick) => {
            let n = o.retry_dead(pick.id.as_deref())?;
            println!("{}", serde_json::json!({ "retried": n }));
        }
        DeadLetterCommand::Drop(pick) => {
            let n = o.drop_dead(pick.id.as_deref())?;
            println!("{}", serde_json::json!({ "dropped": n }));
        }
    }
    Ok(())
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
            let body = serde_json::to_string(&p)?;
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
        .map_err(AgentError::Runtime)?;
    tokio::pin!(task);
    tokio::select! {
        _ = &mut task => {}
        _ = tokio::signal::ctrl_c() => { cancel.cancel(); let _ = task.await; }
        _ = term.recv() => { cancel.cancel(); let _ = task.await; }
    }
    stats.log_summary();
    Ok(())
}
