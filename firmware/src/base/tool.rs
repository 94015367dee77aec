//! Running a system tool (`journalctl`, `rauc`, `mender-update`) for the
//! technician's views: read-only, with a deadline and bounded output, so a
//! hung or chatty tool costs a line of "no answer", never the service.

use std::time::Duration;
use tokio::io::AsyncReadExt;

/// What the tool printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Exited with status 0.
    pub success: bool,
    /// The exit status as the OS describes it.
    pub status: String,
    /// Standard output, at most the limit given.
    pub stdout: Vec<u8>,
    /// Standard error, at most 4 KiB.
    pub stderr: Vec<u8>,
}

/// Why there is no output.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed (not on `PATH`).
    #[error("{0} is not installed")]
    Absent(String),
    /// It could not be started or read.
    #[error("{program}: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// It did not finish in time (it is killed).
    #[error("{program}: no answer within {after:?}")]
    TimedOut { program: String, after: Duration },
}

/// Most bytes kept of standard error.
const MAX_STDERR: u64 = 4096;

/// Run `program args…` with stdin closed; kill it after `timeout`; keep at
/// most `max_stdout` bytes of its output (the rest is read and dropped, so
/// the tool never blocks on a full pipe).
pub async fn run(
    program: &str,
    args: &[&str],
    timeout: Duration,
    max_stdout: u64,
) -> Result<Output, ToolError> {
    let io = |source| ToolError::Io {
        program: program.to_owned(),
        source,
    };
    let mut tries = 0;
    let mut child = loop {
        let spawned = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ToolError::Absent(program.to_owned()))
            }
            // ETXTBSY: a script just written is still open in a child
            // another thread forked (it closes at that child's exec).
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(io(e)),
        }
    };
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io(std::io::Error::other("no pipes")));
    };
    let work = async {
        let (stdout, stderr) =
            tokio::try_join!(bounded(out, max_stdout), bounded(err, MAX_STDERR))?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>(Output {
            success: status.success(),
            status: status.to_string(),
            stdout,
            stderr,
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map_err(io),
        Err(_) => Err(ToolError::TimedOut {
            program: program.to_owned(),
            after: timeout,
        }),
    }
}

/// Read a pipe to its end, keeping the first `max` bytes.
async fn bounded(mut r: impl tokio::io::AsyncRead + Unpin, max: u64) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    (&mut r).take(max).read_to_end(&mut kept).await?;
    tokio::io::copy(&mut r, &mut tokio::io::sink()).await?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_bounded_a_missing_tool_is_absent_and_a_hung_one_times_out() {
        let out = run(
            "sh",
            &["-c", "yes hello | head -c 100000; echo oops >&2; exit 3"],
            Duration::from_secs(30),
            10,
        )
        .await
        .unwrap();
        assert_eq!(out.stdout, b"hello\nhell");
        assert_eq!(out.stderr, b"oops\n");
        assert!(!out.success);
        assert!(out.status.contains('3'), "{}", out.status);

        let absent = run("talkie-no-such-tool", &[], Duration::from_secs(30), 10).await;
        assert!(matches!(absent, Err(ToolError::Absent(_))), "{absent:?}");

        let hung = run("sleep", &["600"], Duration::from_millis(200), 10).await;
        assert!(matches!(hung, Err(ToolError::TimedOut { .. })), "{hung:?}");
    }
}
