//! Named threads that can be joined with a deadline.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A thread that says when it is done, so joining can be bounded.
#[derive(Debug)]
pub struct Tracked<T> {
    name: &'static str,
    handle: JoinHandle<T>,
    /// In a mutex only so a `Tracked` is `Sync` (an async task holding one
    /// across an await stays `Send`); only [`Tracked::join`] takes it.
    done: std::sync::Mutex<mpsc::Receiver<()>>,
}

/// Why a tracked thread could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("thread {0} did not stop within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("thread {0} panicked")]
    Panicked(&'static str),
}

/// Spawn `f` on a thread called `name`.
pub fn spawn<T: Send + 'static>(
    name: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<Tracked<T>> {
    let (tx, done) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let out = f();
            let _ = tx.send(());
            out
        })?;
    Ok(Tracked {
        name,
        handle,
        done: std::sync::Mutex::new(done),
    })
}

impl<T> Tracked<T> {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Wait up to `timeout` for the thread to end (blocking).
    pub fn join(self, timeout: Duration) -> Result<T, JoinError> {
        let done = self
            .done
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match done.recv_timeout(timeout) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(JoinError::Timeout(self.name, timeout))
            }
        }
        self.handle
            .join()
            .map_err(|_| JoinError::Panicked(self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_with_a_bound() {
        let t = spawn("t-ok", || 7).unwrap();
        assert_eq!(t.join(Duration::from_secs(5)).unwrap(), 7);
        let (tx, rx) = mpsc::channel::<()>();
        let t = spawn("t-wait", move || rx.recv().is_err()).unwrap();
        assert!(matches!(
            t.join(Duration::from_millis(1)),
            Err(JoinError::Timeout("t-wait", _))
        ));
        drop(tx);
        let t = spawn("t-panic", || -> u8 { panic!("boom") }).unwrap();
        assert!(matches!(
            t.join(Duration::from_secs(5)),
            Err(JoinError::Panicked("t-panic"))
        ));
    }
}
