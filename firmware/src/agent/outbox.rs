//! The durable outbox: SQLite (bundled) in WAL mode with
//! `synchronous=FULL`, so a transcript acknowledged by [`Outbox::enqueue`]
//! survives a power cut.
//!
//! - `outbox`: items awaiting delivery, FIFO by `seq`. An item leaves it
//!   only after the agent answered 2xx/409 (→ `delivered`), a permanent
//!   4xx, or a limit of `[outbox]` ran out: the agent failed on it with a
//!   5xx `max_attempts` times, or it waited longer than `max_age_h`
//!   (→ `dead_letter`).
//! - `delivered`: the most recent [`RECENT_DELIVERED`] deliveries, with the
//!   agent's reply, for the status page.
//! - `dead_letter`: refused items, the most recent [`DEAD_LETTER_KEPT`];
//!   [`Outbox::retry_dead`] puts them back in the queue,
//!   [`Outbox::drop_dead`] deletes them (`talkie outbox dead-letter …`,
//!   `/api/v1/dead-letters`).
//! - `outbox_count`: the number of waiting items, kept by triggers in the
//!   same transaction as every insert and delete, so the depth is read
//!   without scanning and stays right when another process (the CLI)
//!   changes the file; the oldest item is found through an index.
//!
//! **When full** (`outbox.max_items` waiting), new transcripts are refused
//! with [`OutboxError::Full`]: the visitor sees the error blink and the
//! event is logged and counted. Nothing already accepted is ever evicted:
//! the promise is that an accepted transcript reaches the agent.
//!
//! **A corrupt file** (not a database, or failing `PRAGMA quick_check`) is
//! renamed to `<path>.corrupt-<unix seconds>` (with its `-wal`/`-shm`), a
//! fresh database is created, and [`Opened::recovered_from`] says so.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// Deliveries kept for the status page.
pub const RECENT_DELIVERED: u32 = 100;
/// Dead letters kept.
pub const DEAD_LETTER_KEPT: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("outbox {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file's content is damaged (handled inside [`Outbox::open`]).
    #[error("outbox {} is damaged: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("outbox is full ({max} transcripts waiting for the agent); new transcripts are refused until it drains")]
    Full { max: u32 },
    /// Less than [`DISK_RESERVE`] free on the outbox's filesystem.
    #[error("outbox {}: only {free} bytes free on its filesystem (talkie keeps {reserve} free so waiting transcripts can still be delivered); new transcripts are refused until space is freed", path.display())]
    DiskFull {
        path: PathBuf,
        free: u64,
        reserve: u64,
    },
}

/// Bytes the outbox leaves free on its filesystem: below this, new items
/// are refused ([`OutboxError::DiskFull`]). Moving an item to `delivered`
/// writes too (WAL pages, up to SQLite's 1,000-page auto-checkpoint:
/// about 4 MiB), so an outbox that filled its disk to the last byte could
/// never drain (found by the chaos suite's disk-full case).
pub const DISK_RESERVE: u64 = 8 << 20;

pub use crate::base::telemetry::unix_ms;

/// An item waiting for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub seq: i64,
    pub id: String,
    /// The JSON body to POST.
    pub body: String,
    pub created_ms: u64,
    pub attempts: u32,
    /// Attempts the agent answered with a server error (5xx but 503):
    /// counted against `outbox.max_attempts`.
    pub server_errors: u32,
}

/// A recent delivery.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Delivered {
    pub id: String,
    pub body: String,
    pub delivered_ms: u64,
    pub attempts: u32,
    pub reply_text: Option<String>,
}

/// A refused item.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub body: String,
    pub failed_ms: u64,
    pub status: u16,
    pub reason: String,
}

/// Result of [`Outbox::open`].
#[derive(Debug)]
pub struct Opened {
    pub outbox: Outbox,
    /// Where a corrupt database was moved to, if one was.
    pub recovered_from: Option<PathBuf>,
}

/// The outbox database.
#[derive(Debug)]
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    max_items: u32,
    /// `PRAGMA data_version` when [`Outbox::changed_elsewhere`] last looked.
    seen_version: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS delivered (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    delivered_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    reply_text TEXT
);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    failed_ms INTEGER NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_ms);
CREATE TABLE IF NOT EXISTS outbox_count (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    n INTEGER NOT NULL
);
INSERT OR IGNORE INTO outbox_count (one, n) VALUES (1, (SELECT COUNT(*) FROM outbox));
CREATE TRIGGER IF NOT EXISTS outbox_count_insert AFTER INSERT ON outbox
    BEGIN UPDATE outbox_count SET n = n + 1 WHERE one = 1; END;
CREATE TRIGGER IF NOT EXISTS outbox_count_delete AFTER DELETE ON outbox
    BEGIN UPDATE outbox_count SET n = n - 1 WHERE one = 1; END;
";

/// Columns added after the first release: added to an older file on open.
const ADDED_COLUMNS: &[(&str, &str)] = &[(
    "server_errors",
    "ALTER TABLE outbox ADD COLUMN server_errors INTEGER NOT NULL DEFAULT 0",
)];

/// The outbox as the service shares it between the controller (which
/// adds), the link (which delivers) and the status API. Opened at start;
/// when that fails (an unwritable directory, a read-only or full
/// filesystem) the service still runs, degraded, and the next use opens it
/// again, so delivery heals without a restart.
#[derive(Debug)]
pub struct SharedOutbox {
    path: PathBuf,
    max_items: u32,
    inner: std::sync::Mutex<Option<Outbox>>,
    /// Why it could not be opened the last time (shown while closed).
    last_open_error: std::sync::Mutex<Option<String>>,
    /// A corrupt file was moved aside by an open after start.
    recovered: std::sync::atomic::AtomicU64,
    /// Mirrors `inner.is_some()` for readers that must not wait on a write.
    is_open: std::sync::atomic::AtomicBool,
}

impl SharedOutbox {
    /// Try to open `path` now; a failure leaves it closed (see [`Self::with`]).
    pub fn open(path: &Path, max_items: u32) -> (Self, Option<PathBuf>) {
        let shared = Self {
            path: path.to_owned(),
            max_items,
            inner: std::sync::Mutex::new(None),
            last_open_error: std::sync::Mutex::new(None),
            recovered: std::sync::atomic::AtomicU64::new(0),
            is_open: std::sync::atomic::AtomicBool::new(false),
        };
        let recovered = match Outbox::open(path, max_items) {
            Ok(o) => {
                *shared.lock() = Some(o.outbox);
                shared
                    .is_open
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                o.recovered_from
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "outbox cannot be opened: running degraded (transcripts are refused with the error blink) and trying again on each use");
                shared.set_open_error(Some(e.to_string()));
                None
            }
        };
        (shared, recovered)
    }

    /// An already open outbox (tests, the CLI).
    pub fn from_outbox(o: Outbox) -> Self {
        Self {
            path: o.path.clone(),
            max_items: o.max_items,
            inner: std::sync::Mutex::new(Some(o)),
            last_open_error: std::sync::Mutex::new(None),
            recovered: std::sync::atomic::AtomicU64::new(0),
            is_open: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outbox>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_open_error(&self, e: Option<String>) {
        *self
            .last_open_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e;
    }

    /// Why the outbox is closed, `None` while it is open. Never waits on
    /// a write in progress.
    pub fn unavailable(&self) -> Option<String> {
        if self.is_open.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.last_open_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .or_else(|| Some("not opened yet".to_owned()))
    }

    /// Corrupt files moved aside by opens after start.
    pub fn recovered_later(&self) -> u64 {
        self.recovered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Run `f` on the outbox, opening it first if it is closed (blocking:
    /// call it off the async threads).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Outbox) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let mut guard = self.lock();
        if guard.is_none() {
            match Outbox::open(&self.path, self.max_items) {
                Ok(o) => {
                    if o.recovered_from.is_some() {
                        self.recovered
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::info!(path = %self.path.display(), "outbox opened: delivery resumes");
                    self.set_open_error(None);
                    *guard = Some(o.outbox);
                    self.is_open
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    self.set_open_error(Some(e.to_string()));
                    return Err(e);
                }
            }
        }
        match guard.as_mut() {
            Some(o) => f(o),
            None => Err(OutboxError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("outbox not open"),
            }),
        }
    }
}

impl Outbox {
    /// Open (or create) the database at `path`, recovering from corruption.
    pub fn open(path: &Path, max_items: u32) -> Result<Opened, OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::base::private_files::private_dir(dir).map_err(|source| OutboxError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        match Self::open_checked(path, max_items) {
            Ok(outbox) => Ok(Opened {
                outbox,
                recovered_from: None,
            }),
            Err(OutboxError::Corrupt { reason, .. }) if path.exists() => {
                let aside =
                    PathBuf::from(format!("{}.corrupt-{}", path.display(), unix_ms() / 1000));
                tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %reason, "outbox database is corrupt; moved aside, starting a fresh one");
                std::fs::rename(path, &aside).map_err(|source| OutboxError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                for ext in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{ext}", path.display()));
                    if side.exists() {
                        let _ = std::fs::rename(&side, format!("{}{ext}", aside.display()));
                    }
                }
                Ok(Opened {
                    outbox: Self::open_checked(path, max_items)?,
                    recovered_from: Some(aside),
                })
            }
            Err(e) => Err(e),
        }
    }

    fn open_checked(path: &Path, max_items: u32) -> Result<Self, OutboxError> {
        let err = |source| OutboxError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        // Damage shows up here: in the header, the schema or the pages.
        let corrupt = |reason: String| OutboxError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        match conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
            Ok(check) if check == "ok" => {}
            Ok(check) => return Err(corrupt(check)),
            Err(e) if is_corruption(&e) => return Err(corrupt(e.to_string())),
            Err(e) => return Err(err(e)),
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(err)?;
        if mode != "wal" {
            tracing::warn!(mode, "outbox: WAL mode not available; using {mode}");
        }
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(err)?;
        let tx = conn.unchecked_transaction().map_err(err)?;
        tx.execute_batch(SCHEMA).map_err(err)?;
        for (column, add) in ADDED_COLUMNS {
            let present: bool = tx
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('outbox') WHERE name = ?1",
                    [column],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n > 0)
                .map_err(err)?;
            if !present {
                tx.execute_batch(add).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            max_items,
            seen_version: 0,
        })
    }

    fn err(&self, source: rusqlite::Error) -> OutboxError {
        OutboxError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// [`OutboxError::DiskFull`] when the filesystem's free bytes plus the
    /// database's own free pages (delivered items leave those, and new
    /// items reuse them) are less than [`DISK_RESERVE`]. Not knowing is not
    /// refusing.
    fn check_space(&self) -> Result<(), OutboxError> {
        let Some(fs_free) = crate::base::telemetry::free_bytes(&self.path) else {
            return Ok(());
        };
        if fs_free >= DISK_RESERVE {
            return Ok(());
        }
        let pages = |pragma: &str| {
            self.conn
                .query_row(pragma, [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
                .unwrap_or(0)
        };
        let free = fs_free + pages("PRAGMA freelist_count") * pages("PRAGMA page_size");
        match free {
            free if free < DISK_RESERVE => Err(OutboxError::DiskFull {
                path: self.path.clone(),
                free,
                reserve: DISK_RESERVE,
            }),
            _ => Ok(()),
        }
    }

    /// Commit a new item. Returns only once it is on disk.
    pub fn enqueue(&mut self, id: &str, body: &str) -> Result<(), OutboxError> {
        self.check_space()?;
        let depth = self.depth()?;
        if depth >= u64::from(self.max_items) {
            return Err(OutboxError::Full {
                max: self.max_items,
            });
        }
        self.conn
            .execute(
                "INSERT INTO outbox (id, body, created_ms) VALUES (?1, ?2, ?3)",
                params![id, body, unix_ms() as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Commit several items in one transaction (one disk sync), as many as
    /// fit; returns how many were added.
    pub fn enqueue_many(&mut self, items: &[(String, String)]) -> Result<usize, OutboxError> {
        self.check_space()?;
        let room = u64::from(self.max_items).saturating_sub(self.depth()?);
        let n = items.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let now = unix_ms() as i64;
        self.in_tx(|tx| {
            let mut st =
                tx.prepare("INSERT INTO outbox (id, body, created_ms) VALUES (?1, ?2, ?3)")?;
            for (id, body) in &items[..n] {
                st.execute(params![id, body, now])?;
            }
            Ok(())
        })?;
        Ok(n)
    }

    /// The oldest item waiting.
    pub fn head(&self) -> Result<Option<Pending>, OutboxError> {
        self.conn
            .query_row(
                "SELECT seq, id, body, created_ms, attempts, server_errors FROM outbox ORDER BY seq LIMIT 1",
                [],
                |r| {
                    Ok(Pending {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        body: r.get(2)?,
                        created_ms: r.get::<_, i64>(3)? as u64,
                        attempts: r.get(4)?,
                        server_errors: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// True the first time, then whenever another connection (the
    /// `talkie outbox` command) committed since the last call: SQLite's
    /// `data_version`, one page read, no scan.
    pub fn changed_elsewhere(&mut self) -> Result<bool, OutboxError> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let changed = v != self.seen_version;
        self.seen_version = v;
        Ok(changed)
    }

    /// Items waiting (kept by triggers: no scan).
    pub fn depth(&self) -> Result<u64, OutboxError> {
        self.conn
            .query_row("SELECT n FROM outbox_count WHERE one = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Creation time of the oldest waiting item (through the index).
    pub fn oldest_ms(&self) -> Result<Option<u64>, OutboxError> {
        self.conn
            .query_row("SELECT MIN(created_ms) FROM outbox", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|v| v.map(|v| v as u64))
            .map_err(|e| self.err(e))
    }

    /// Count a failed attempt on `seq`; `server_error`: the agent answered
    /// it with a 5xx (counted against `outbox.max_attempts`).
    pub fn record_attempt(
        &mut self,
        seq: i64,
        error: &str,
        server_error: bool,
    ) -> Result<(), OutboxError> {
        self.conn
            .execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2,
                 server_errors = server_errors + ?3 WHERE seq = ?1",
                params![seq, error, i64::from(server_error)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Dead letters kept (at most [`DEAD_LETTER_KEPT`]).
    pub fn dead_count(&self) -> Result<u64, OutboxError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM dead_letter", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Put dead letters back at the end of the queue (their id, body and
    /// so their `Idempotency-Key` unchanged): the one with `id`, or all
    /// (oldest first) when `id` is `None`, as many as the outbox has room
    /// for. Returns how many were put back.
    pub fn retry_dead(&mut self, id: Option<&str>) -> Result<u64, OutboxError> {
        let room = u64::from(self.max_items).saturating_sub(self.depth()?);
        let room = i64::try_from(room).unwrap_or(i64::MAX);
        let mut moved = 0;
        self.in_tx(|tx| {
            let picked = "SELECT seq FROM dead_letter WHERE (?1 IS NULL OR id = ?1)
                          AND id NOT IN (SELECT id FROM outbox) ORDER BY seq LIMIT ?2";
            moved = tx.execute(
                &format!(
                    "INSERT OR IGNORE INTO outbox (id, body, created_ms)
                     SELECT id, body, ?3 FROM dead_letter WHERE seq IN ({picked}) ORDER BY seq"
                ),
                params![id, room, unix_ms() as i64],
            )? as u64;
            tx.execute(
                "DELETE FROM dead_letter WHERE (?1 IS NULL OR id = ?1)
                 AND id IN (SELECT id FROM outbox)",
                params![id],
            )?;
            Ok(())
        })?;
        Ok(moved)
    }

    /// Delete dead letters: the one with `id`, or all when `None`.
    /// Returns how many were deleted.
    pub fn drop_dead(&mut self, id: Option<&str>) -> Result<u64, OutboxError> {
        self.conn
            .execute(
                "DELETE FROM dead_letter WHERE (?1 IS NULL OR id = ?1)",
                params![id],
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Run `f` in one transaction.
    fn in_tx(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), OutboxError> {
        let path = self.path.clone();
        let err = |source| OutboxError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&err)?;
        f(&tx).map_err(&err)?;
        tx.commit().map_err(err)
    }

    /// The agent has `seq`: move it to `delivered` (one transaction).
    pub fn mark_delivered(
        &mut self,
        seq: i64,
        reply_text: Option<&str>,
    ) -> Result<(), OutboxError> {
        self.in_tx(|tx| {
            tx.execute(
                "INSERT INTO delivered (id, body, delivered_ms, attempts, reply_text)
                 SELECT id, body, ?2, attempts + 1, ?3 FROM outbox WHERE seq = ?1",
                params![seq, unix_ms() as i64, reply_text],
            )?;
            tx.execute("DELETE FROM outbox WHERE seq = ?1", params![seq])?;
            tx.execute(
                "DELETE FROM delivered WHERE seq <= (SELECT MAX(seq) FROM delivered) - ?1",
                params![RECENT_DELIVERED],
            )?;
            Ok(())
        })
    }

    /// The agent refused `seq` for good: move it to `dead_letter`.
    pub fn mark_dead(&mut self, seq: i64, status: u16, reason: &str) -> Result<(), OutboxError> {
        self.in_tx(|tx| {
            tx.execute(
                "INSERT INTO dead_letter (id, body, failed_ms, status, reason)
                 SELECT id, body, ?2, ?3, ?4 FROM outbox WHERE seq = ?1",
                params![seq, unix_ms() as i64, status, reason],
            )?;
            tx.execute("DELETE FROM outbox WHERE seq = ?1", params![seq])?;
            tx.execute(
                "DELETE FROM dead_letter WHERE seq <= (SELECT MAX(seq) FROM dead_letter) - ?1",
                params![DEAD_LETTER_KEPT],
            )?;
            Ok(())
        })
    }

    /// The most recent deliveries, newest first.
    pub fn recent_delivered(&self, n: u32) -> Result<Vec<Delivered>, OutboxError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, body, delivered_ms, attempts, reply_text FROM delivered ORDER BY seq DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![n], |r| {
                Ok(Delivered {
                    id: r.get(0)?,
                    body: r.get(1)?,
                    delivered_ms: r.get::<_, i64>(2)? as u64,
                    attempts: r.get(3)?,
                    reply_text: r.get(4)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e));
        rows
    }

    /// Dead letters, newest first.
    pub fn dead_letters(&self, n: u32) -> Result<Vec<DeadLetter>, OutboxError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, body, failed_ms, status, reason FROM dead_letter ORDER BY seq DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map(params![n], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    body: r.get(1)?,
                    failed_ms: r.get::<_, i64>(2)? as u64,
                    status: r.get(3)?,
                    reason: r.get(4)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.err(e));
        rows
    }
}

/// Whether the first read of a file failed because of what is in it (moved
/// aside and replaced) rather than where it is (permissions, I/O, a full
/// disk, a lock: reported, the file left alone). Damage to the header shows
/// up as `SQLITE_ERROR` too ("unsupported file format" for a bad schema
/// format number at offset 44, a malformed schema), so every code that is
/// not an environmental one counts. Only the integrity check is judged
/// this way: a failure of talkie's own schema statements is an error.
fn is_corruption(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseCorrupt | C::NotADatabase | C::Unknown) => true,
        Some(
            C::CannotOpen
            | C::PermissionDenied
            | C::ReadOnly
            | C::DatabaseBusy
            | C::DatabaseLocked
            | C::DiskFull
            | C::SystemIoFailure
            | C::OutOfMemory
            | C::FileLockingProtocolFailed
            | C::OperationInterrupted
            | C::NoLargeFileSupport
            | C::AuthorizationForStatementDenied,
        ) => false,
        // Anything else the library reports about the file's content.
        Some(_) => true,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max: u32) -> Outbox {
        Outbox::open(&dir.join("outbox.db"), max).unwrap().outbox
    }

    #[test]
    fn fifo_survives_reopen_and_moves_items_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = open(dir.path(), 10);
            o.enqueue("a", "{\"n\":1}").unwrap();
            o.enqueue("b", "{\"n\":2}").unwrap();
            o.enqueue("c", "{\"n\":3}").unwrap();
        }
        let mut o = open(dir.path(), 10);
        assert_eq!(o.depth().unwrap(), 3);
        let h = o.head().unwrap().unwrap();
        assert_eq!((h.id.as_str(), h.attempts), ("a", 0));
        o.record_attempt(h.seq, "timeout", false).unwrap();
        assert_eq!(o.head().unwrap().unwrap().attempts, 1);
        o.mark_delivered(h.seq, Some("hello")).unwrap();
        let h = o.head().unwrap().unwrap();
        assert_eq!(h.id, "b");
        o.mark_dead(h.seq, 400, "bad request").unwrap();
        assert_eq!(o.head().unwrap().unwrap().id, "c");
        assert_eq!(o.depth().unwrap(), 1);
        let d = o.recent_delivered(10).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].id.as_str(), d[0].attempts), ("a", 2));
        assert_eq!(d[0].reply_text.as_deref(), Some("hello"));
        let dl = o.dead_letters(10).unwrap();
        assert_eq!((dl[0].id.as_str(), dl[0].status), ("b", 400));
        assert!(o.enqueue("c", "dup").is_err(), "ids are unique");
    }

    #[test]
    fn a_full_outbox_refuses_new_items_and_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), 2);
        o.enqueue("a", "1").unwrap();
        o.enqueue("b", "2").unwrap();
        let e = o.enqueue("c", "3").unwrap_err();
        assert!(matches!(e, OutboxError::Full { max: 2 }), "{e}");
        assert_eq!(o.depth().unwrap(), 2);
        assert_eq!(o.head().unwrap().unwrap().id, "a");
    }

    #[test]
    fn recent_deliveries_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), 1000);
        for i in 0..(RECENT_DELIVERED + 20) {
            o.enqueue(&format!("id{i}"), "{}").unwrap();
            let h = o.head().unwrap().unwrap();
            o.mark_delivered(h.seq, None).unwrap();
        }
        let d = o.recent_delivered(1000).unwrap();
        assert_eq!(d.len(), RECENT_DELIVERED as usize);
        assert_eq!(d[0].id, format!("id{}", RECENT_DELIVERED + 19));
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        std::fs::write(
            &path,
            b"this is not a database, just some bytes".repeat(200),
        )
        .unwrap();
        let opened = Outbox::open(&path, 10).unwrap();
        let aside = opened.recovered_from.expect("recovered");
        assert!(aside.to_string_lossy().contains("outbox.db.corrupt-"));
        assert!(std::fs::read(&aside).unwrap().starts_with(b"this is not"));
        let mut o = opened.outbox;
        o.enqueue("a", "1").unwrap();
        assert_eq!(o.depth().unwrap(), 1);
    }

    /// Issue 18 row 6: a valid file whose header says schema format 9
    /// (bytes 44-47) failed with "unsupported file format" on every start.
    #[test]
    fn a_damaged_header_is_moved_aside_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        {
            let mut o = Outbox::open(&path, 10).unwrap().outbox;
            o.enqueue("a", "1").unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[44..48].copy_from_slice(&[0, 0, 0, 9]);
        std::fs::write(&path, &bytes).unwrap();
        let opened = Outbox::open(&path, 10).unwrap();
        assert!(opened.recovered_from.is_some(), "moved aside");
        assert_eq!(opened.outbox.depth().unwrap(), 0, "a fresh database");
    }

    /// An outbox that cannot be opened for a reason outside the file
    /// (here: its directory is a file) is an error, and nothing is moved.
    #[test]
    fn an_unopenable_path_is_an_error_not_a_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let e = Outbox::open(&blocker.join("outbox.db"), 10).unwrap_err();
        assert!(matches!(e, OutboxError::Io { .. }), "{e}");
        assert_eq!(std::fs::read(&blocker).unwrap(), b"x");
    }

    /// Issue 18 row 16: the depth is kept by triggers, also for changes
    /// made by another connection (the CLI beside the service), and an
    /// older file without the counter gets one with the right value.
    #[test]
    fn depth_is_counted_without_scanning_and_across_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        {
            // A file as the first release wrote it: no counter, no column.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
                 body TEXT NOT NULL, created_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                 last_error TEXT);
                 INSERT INTO outbox (id, body, created_ms) VALUES ('old1', '{}', 5), ('old2', '{}', 7);",
            )
            .unwrap();
        }
        let mut service = Outbox::open(&path, 100).unwrap().outbox;
        assert_eq!(service.depth().unwrap(), 2);
        assert_eq!(service.oldest_ms().unwrap(), Some(5));
        let mut cli = Outbox::open(&path, 100).unwrap().outbox;
        cli.enqueue("new", "{}").unwrap();
        assert_eq!(service.depth().unwrap(), 3, "seen by the other connection");
        let h = service.head().unwrap().unwrap();
        assert_eq!((h.id.as_str(), h.server_errors), ("old1", 0));
        service.mark_delivered(h.seq, None).unwrap();
        assert_eq!(cli.depth().unwrap(), 2);
        assert_eq!(service.oldest_ms().unwrap(), Some(7));
        let plan: String = service
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT MIN(created_ms) FROM outbox",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("outbox_created"), "{plan}");
        // The link recounts dead letters only after another connection
        // wrote: its own writes do not count as "elsewhere".
        assert!(service.changed_elsewhere().unwrap(), "first call");
        service.enqueue("own", "{}").unwrap();
        assert!(!service.changed_elsewhere().unwrap(), "own write");
        cli.drop_dead(None).unwrap();
        assert!(
            !service.changed_elsewhere().unwrap(),
            "nothing to delete, no commit"
        );
        cli.enqueue("cli", "{}").unwrap();
        assert!(service.changed_elsewhere().unwrap(), "the CLI committed");
        assert!(!service.changed_elsewhere().unwrap());
    }

    /// Issue 18 row 5: an outbox that cannot be opened (its directory is a
    /// file) is closed, says why, refuses work with that error, and opens
    /// on the first use after the path became writable, with no restart.
    #[test]
    fn a_closed_outbox_opens_on_the_next_use() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("spool");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("outbox.db");
        let (shared, recovered) = SharedOutbox::open(&path, 10);
        assert!(recovered.is_none());
        let why = shared.unavailable().expect("closed");
        assert!(why.contains("spool"), "{why}");
        assert!(shared.with(|o| o.enqueue("a", "{}")).is_err());
        assert!(shared.unavailable().is_some(), "still closed");
        std::fs::remove_file(&blocker).unwrap();
        shared.with(|o| o.enqueue("a", "{}")).unwrap();
        assert_eq!(shared.unavailable(), None);
        assert_eq!(shared.with(|o| o.depth()).unwrap(), 1);
        assert!(path.is_file());
    }

    #[test]
    fn dead_letters_can_be_retried_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = open(dir.path(), 3);
        for id in ["a", "b", "c"] {
            o.enqueue(id, &format!("{{\"id\":\"{id}\"}}")).unwrap();
            let h = o.head().unwrap().unwrap();
            o.record_attempt(h.seq, "HTTP 500", true).unwrap();
            o.mark_dead(h.seq, 500, "agent failed on it").unwrap();
        }
        assert_eq!((o.depth().unwrap(), o.dead_count().unwrap()), (0, 3));
        assert_eq!(o.retry_dead(Some("b")).unwrap(), 1);
        assert_eq!(o.retry_dead(Some("nope")).unwrap(), 0);
        let h = o.head().unwrap().unwrap();
        assert_eq!((h.id.as_str(), h.body.as_str()), ("b", "{\"id\":\"b\"}"));
        assert_eq!((h.attempts, h.server_errors), (0, 0), "a fresh start");
        o.enqueue("x", "{}").unwrap();
        // Room for one more: "a" goes back, "c" stays dead.
        assert_eq!(o.retry_dead(None).unwrap(), 1);
        let dead: Vec<String> = o
            .dead_letters(10)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(dead, ["c"]);
        assert_eq!(o.drop_dead(None).unwrap(), 1);
        assert_eq!((o.depth().unwrap(), o.dead_count().unwrap()), (3, 0));
    }
}
