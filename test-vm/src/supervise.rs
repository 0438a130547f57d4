//! Child processes that never outlive the harness: QEMU (the `qemu` module) and the control
//! plane's components (the `cluster` module).
//!
//! Every child is started as `setpriv --pdeathsig KILL -- PROGRAM ARGS` (util-linux `setpriv`
//! sets `PR_SET_PDEATHSIG` and then execs the program, so the PID is the program's own; unsafe
//! code, and with it `pre_exec`, is forbidden in this workspace), in its own process group (a
//! terminal's Ctrl-C reaches only the harness, which then stops its children in order), with
//! stdin from /dev/null and stdout and stderr into a log file.
//!
//! The death signal is tied to the *thread* that forked the child, not to the process: a
//! child spawned from a short-lived thread (a test's, a `spawn_blocking` worker's) would be
//! killed when that thread ends. [`Spawner`] forks from a thread of its own that lives as
//! long as the `Spawner`, so its children live until they are stopped or the harness dies,
//! whichever thread asked for them.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal, kill_process_group};

/// `setpriv --pdeathsig KILL -- program`, in its own process group, stdin from /dev/null.
/// The caller adds arguments and the output files.
pub fn command(program: &OsStr) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "--"]).arg(program).stdin(Stdio::null()).process_group(0);
    cmd
}

/// Send stdout and stderr to `log` (appended, created if missing).
pub fn log_to(cmd: &mut Command, log: &Path) -> Result<()> {
    let file =
        OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    let file2 = file.try_clone().with_context(|| format!("opening {}", log.display()))?;
    cmd.stdout(file).stderr(file2);
    Ok(())
}

/// The command line as one shell-quoted string, for reports and for pasting into a shell.
pub fn shell_line(program: &OsStr, args: &[OsString]) -> String {
    std::iter::once(program).chain(args.iter().map(OsString::as_os_str)).map(shell_quote).collect::<Vec<_>>().join(" ")
}

fn shell_quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+%".contains(c)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

type Job = (Command, mpsc::Sender<io::Result<Child>>);

/// Forks children from a thread that lives as long as this value (see the module docs).
#[derive(Debug)]
pub struct Spawner {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub fn new() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("test-vm-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The asker may have given up; the child is then reaped by nobody but it
                    // cannot be: the asker holds the receiving end until it has the answer.
                    let _ = reply.send(cmd.spawn());
                }
            })
            .context("starting the process-spawning thread")?;
        Ok(Self { jobs: Some(tx), thread: Some(thread) })
    }

    pub fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (tx, rx) = mpsc::channel();
        let gone = || io::Error::other("the process-spawning thread has ended");
        self.jobs.as_ref().ok_or_else(gone)?.send((cmd, tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop. Children still running get their death
        // signal now: stop them before dropping the spawner.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A named child with its log, stopped (and reaped) when dropped.
#[derive(Debug)]
pub struct Supervised {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Supervised {
    pub fn new(name: &str, log: &Path, child: Child) -> Self {
        Self { name: name.to_owned(), log: log.to_owned(), child, exited: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the child has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// SIGTERM to the child's process group, SIGKILL after `grace`, then reap. The group is
    /// only signalled while its leader is not yet reaped, so the group ID cannot have been
    /// reused by an unrelated process. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited.is_some() {
            return;
        }
        let pgid = Pid::from_child(&self.child);
        let _ = kill_process_group(pgid, Signal::TERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = kill_process_group(pgid, Signal::KILL);
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// The last `lines` lines of the child's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// The last `lines` lines of a file (at most its last 64 KiB), or a note saying why not.
pub fn tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let from = len.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("log");
        std::fs::write(&p, (1..=30).map(|i| format!("line {i}\n")).collect::<String>()).expect("write");
        assert_eq!(tail(&p, 2), "line 29\nline 30");
        assert!(tail(&dir.path().join("missing"), 2).starts_with("(cannot read"));
    }

    #[test]
    fn a_spawned_child_is_stopped_with_sigterm_from_any_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sleep.log");
        let spawner = Spawner::new().expect("spawner");
        // Spawned on behalf of a thread that ends at once: the child must outlive it.
        let child = std::thread::scope(|s| {
            s.spawn(|| {
                let mut cmd = command(OsStr::new("sh"));
                cmd.args(["-c", "trap 'echo got TERM; exit 7' TERM; echo up; while :; do sleep 0.05; done"]);
                log_to(&mut cmd, &log).expect("log");
                spawner.spawn(cmd).expect("spawn")
            })
            .join()
            .expect("thread")
        });
        let mut sup = Supervised::new("sleeper", &log, child);
        let t0 = Instant::now();
        while !tail(&log, 1).contains("up") && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(sup.try_wait().expect("wait"), None, "the child died with its asking thread");
        sup.stop(Duration::from_secs(5));
        assert_eq!(sup.try_wait().expect("wait").and_then(|s| s.code()), Some(7));
        assert!(sup.log_tail(5).contains("got TERM"));
        sup.stop(Duration::from_secs(5)); // idempotent
    }
}
