//! Supervising a lifecycle process: prefixed output streaming, cancellation as
//! signals, and how it ended.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, Pid, Signal};

use super::RunnerError;
use crate::cancel::Cancel;

/// How long a process gets after SIGINT before it is killed.
pub const GRACE: Duration = Duration::from_secs(10);

/// How the lifecycle process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal (not by us).
    Signaled(i32),
    /// We stopped it because the build was cancelled (Ctrl-C).
    Interrupted,
}

impl RunStatus {
    /// Whether the lifecycle succeeded.
    pub fn success(self) -> bool {
        self == RunStatus::Exited(0)
    }

    /// The exit code that passes this failure on, as shells report it (the code
    /// itself; 128 + the signal); `None` for success, an interruption, or a code
    /// outside 1..=255.
    pub fn exit_code(self) -> Option<u8> {
        match self {
            RunStatus::Exited(code) => u8::try_from(code).ok().filter(|c| *c != 0),
            RunStatus::Signaled(sig) => u8::try_from(128 + sig).ok(),
            RunStatus::Interrupted => None,
        }
    }
}

/// Keeps the last lines of the lifecycle's output for explaining a failure.
#[derive(Debug, Default)]
pub struct LineWatcher {
    lines: Mutex<VecDeque<String>>,
    /// The phase headings seen (`===> ANALYZING`), with when.
    marks: Mutex<Vec<(String, Instant)>>,
    stdout_to_stderr: bool,
}

/// One phase the lifecycle announced, and how long it took.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseTime {
    /// The phase, as the lifecycle named it, lower case (`analyzing`, `building`).
    pub phase: String,
    /// Seconds from its heading to the next heading (or to the lifecycle's end).
    pub seconds: f64,
}

/// How many lines a [`LineWatcher`] keeps.
const KEEP_LINES: usize = 2000;

impl LineWatcher {
    /// An empty watcher.
    pub fn new() -> Self {
        Self::default()
    }

    /// A watcher for a run whose stdout is data (`--json`): the lifecycle's stdout
    /// goes to our stderr too.
    pub fn stdout_to_stderr() -> Self {
        LineWatcher {
            stdout_to_stderr: true,
            ..Self::default()
        }
    }

    /// Record one line (without its newline).
    pub fn push(&self, line: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == KEEP_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_owned());
        drop(lines);
        if let Some(name) = phase_heading(line) {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            marks.push((name, Instant::now()));
        }
    }

    /// Where the time of a run that started at `start` and ended at `end` went,
    /// by the phase headings the lifecycle printed: what came before the first
    /// heading is `starting` (left out when there is none).
    pub fn phases(&self, start: Instant, end: Instant) -> Vec<PhaseTime> {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if marks.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(marks.len() + 1);
        let (mut phase, mut from) = ("starting".to_owned(), start);
        for (name, at) in marks.iter() {
            out.push(PhaseTime {
                phase: std::mem::replace(&mut phase, name.clone()),
                seconds: at.saturating_duration_since(from).as_secs_f64(),
            });
            from = *at;
        }
        out.push(PhaseTime {
            phase,
            seconds: end.saturating_duration_since(from).as_secs_f64(),
        });
        out
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect()
    }
}

/// The phase a lifecycle heading line names: `===> ANALYZING` -> `analyzing`.
fn phase_heading(line: &str) -> Option<String> {
    let name = line.trim().strip_prefix("===>")?.trim();
    (!name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b' ' || b == b'_'))
    .then(|| name.to_ascii_lowercase())
}

/// Copy `from` to `to` line by line, each line prefixed, each line also given to
/// `watcher`. A last line without a newline gets one. Write errors (a closed
/// terminal) stop the copy to `to` but not the draining of `from`, so the child
/// never blocks on a full pipe.
fn pump(from: impl Read, mut to: impl Write, prefix: &str, watcher: &LineWatcher) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    let mut writable = true;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        watcher.push(text);
        if writable {
            let mut out = Vec::with_capacity(prefix.len() + text.len() + 1);
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
            writable = to.write_all(&out).and_then(|()| to.flush()).is_ok();
        }
    }
}

/// Supervise `child` (spawned with piped stdout and stderr) until it ends: its
/// stdout goes to ours and its stderr to ours, each line prefixed with
/// `[phase] ` and recorded in `watcher`. When `cancel` is set the child gets SIGINT
/// (its whole process group when `group` is true: spawn it with
/// `process_group(0)` then), and SIGKILL if it is still running [`GRACE`] later.
/// With `group`, whatever is left of the group is killed once the child exits, so
/// a stray background process cannot hold the output pipes open.
pub fn supervise(
    mut child: Child,
    phase: &str,
    group: bool,
    watcher: &LineWatcher,
    cancel: &Cancel,
) -> Result<RunStatus, RunnerError> {
    let prefix = format!("[{phase}] ");
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pid = Pid::from_raw(child.id() as i32);
    let signal = |sig: Signal| {
        if let Some(pid) = pid {
            // The process may have exited between our check and the signal: ESRCH
            // is fine.
            let _ = if group {
                kill_process_group(pid, sig)
            } else {
                kill_process(pid, sig)
            };
        }
    };

    std::thread::scope(|scope| {
        if let Some(out) = stdout {
            let prefix = &prefix;
            if watcher.stdout_to_stderr {
                scope.spawn(move || pump(out, std::io::stderr(), prefix, watcher));
            } else {
                scope.spawn(move || pump(out, std::io::stdout(), prefix, watcher));
            }
        }
        if let Some(err) = stderr {
            let prefix = &prefix;
            scope.spawn(move || pump(err, std::io::stderr(), prefix, watcher));
        }

        let mut interrupted_at: Option<Instant> = None;
        let mut killed = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) => {}
                Err(source) => {
                    break Err(RunnerError::Io {
                        what: format!("waiting for the {phase}"),
                        source,
                    })
                }
            }
            if cancel.is_cancelled() {
                match interrupted_at {
                    None => {
                        tracing::debug!("build cancelled: sending SIGINT to the {phase}");
                        signal(Signal::INT);
                        interrupted_at = Some(Instant::now());
                    }
                    Some(at) if !killed && at.elapsed() > GRACE => {
                        tracing::warn!(
                            "the {phase} did not stop within {}s of SIGINT: killing it",
                            GRACE.as_secs()
                        );
                        signal(Signal::KILL);
                        killed = true;
                    }
                    Some(_) => {}
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if group {
            signal(Signal::KILL);
        }
        let status = status?;
        if interrupted_at.is_some() {
            return Ok(RunStatus::Interrupted);
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) => RunStatus::Exited(code),
            (None, Some(sig)) => RunStatus::Signaled(sig),
            (None, None) => RunStatus::Exited(-1),
        })
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn phases_follow_the_headings() {
        let w = LineWatcher::new();
        let start = Instant::now();
        w.push("Warning: something");
        w.push("===> ANALYZING");
        w.push("Restoring data");
        w.push("  ===> DETECTING  ");
        w.push("echo ===> not a heading");
        w.push("===> lower case is no heading");
        w.push("===> EXPORTING");
        let end = Instant::now() + Duration::from_millis(5);
        let p = w.phases(start, end);
        let names: Vec<&str> = p.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(names, ["starting", "analyzing", "detecting", "exporting"]);
        let total: f64 = p.iter().map(|p| p.seconds).sum();
        let want = end.duration_since(start).as_secs_f64();
        assert!((total - want).abs() < 1e-6, "{total} vs {want}");
        assert!(p[3].seconds >= 0.005, "{p:?}");
        // No headings, no phases.
        assert_eq!(LineWatcher::new().phases(start, end), Vec::new());
    }

    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn exit_codes_passed_on() {
        assert_eq!(RunStatus::Exited(0).exit_code(), None);
        assert_eq!(RunStatus::Exited(51).exit_code(), Some(51));
        assert_eq!(RunStatus::Exited(300).exit_code(), None);
        assert_eq!(RunStatus::Exited(-1).exit_code(), None);
        assert_eq!(RunStatus::Signaled(9).exit_code(), Some(137));
        assert_eq!(RunStatus::Interrupted.exit_code(), None);
    }

    #[test]
    fn exit_codes_and_lines() {
        let child = Command::new("sh")
            .args(["-c", "echo one; echo two >&2; printf three; exit 51"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        let watcher = LineWatcher::new();
        let status = supervise(child, "creator", false, &watcher, &Cancel::new()).expect("run");
        assert_eq!(status, RunStatus::Exited(51));
        let mut lines = watcher.lines();
        lines.sort();
        assert_eq!(lines, ["one", "three", "two"]);
    }

    #[test]
    fn cancel_sends_sigint() {
        use std::os::unix::process::CommandExt;
        let child = Command::new("sh")
            .args([
                "-c",
                "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.05; done",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("sh");
        let watcher = LineWatcher::new();
        let cancel = Cancel::new();
        std::thread::scope(|s| {
            let c = cancel.clone();
            let w = &watcher;
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !w.lines().iter().any(|l| l == "ready") && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                c.cancel();
            });
            let status = supervise(child, "creator", true, &watcher, &cancel).expect("run");
            assert_eq!(status, RunStatus::Interrupted);
        });
        assert!(watcher.lines().iter().any(|l| l == "got-int"));
    }
}
