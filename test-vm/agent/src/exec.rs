//! Running the guest's own tools (systemctl, cloud-init, ctr) behind a small trait, so the
//! stages that only interpret their output are unit-tested with scripted answers.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// What a finished (or killed) command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// The exit code; `None` if it was killed by a signal (including our timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl CmdOutput {
    pub fn ok(stdout: &str) -> Self {
        CmdOutput { code: Some(0), stdout: stdout.to_owned(), ..Default::default() }
    }

    pub fn exit(code: i32, stdout: &str) -> Self {
        CmdOutput { code: Some(code), stdout: stdout.to_owned(), ..Default::default() }
    }

    /// `stdout` trimmed: what `systemctl is-active` and friends answer.
    pub fn answer(&self) -> &str {
        self.stdout.trim()
    }
}

pub trait Runner {
    /// Runs `program args...` with stdin closed, killing it after `timeout`. An `Err` means
    /// it could not be started at all (e.g. not installed).
    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> io::Result<CmdOutput>;
}

/// Runs real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[&str], timeout: Duration) -> io::Result<CmdOutput> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a timeout kills whatever it started as well.
            .process_group(0)
            .spawn()?;
        // Both pipes are drained on threads: a chatty command (cloud-init --wait prints a dot
        // per poll) must not block on a full pipe while we wait for it.
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let (code, timed_out) = wait_deadline(&mut child, timeout)?;
        // After a kill, a grandchild that escaped the group may still hold the pipes open:
        // take what arrived rather than wait for it.
        let grace = if timed_out { Duration::from_secs(1) } else { Duration::from_secs(3600) };
        Ok(CmdOutput { code, stdout: collect(out, grace), stderr: collect(err, grace), timed_out })
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<mpsc::Receiver<String>> {
    pipe.map(|mut p| {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        });
        rx
    })
}

fn collect(rx: Option<mpsc::Receiver<String>>, grace: Duration) -> String {
    rx.and_then(|rx| rx.recv_timeout(grace).ok()).unwrap_or_default()
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> io::Result<(Option<i32>, bool)> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status.code(), false));
        }
        if start.elapsed() >= timeout {
            // The whole group (see process_group above); `kill` is in every base system and
            // keeps this crate free of unsafe FFI.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let status = child.wait()?;
            return Ok((status.code(), true));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Scripted answers for tests: each command line (`program arg arg`) answers from its own
/// queue; the last answer repeats once the queue is down to one.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Debug, Default)]
    pub struct FakeRunner {
        answers: RefCell<HashMap<String, Vec<io::Result<CmdOutput>>>>,
        pub calls: RefCell<Vec<String>>,
    }

    impl FakeRunner {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn on(self, cmdline: &str, out: CmdOutput) -> Self {
            self.answers.borrow_mut().entry(cmdline.to_owned()).or_default().push(Ok(out));
            self
        }

        pub fn missing(self, cmdline: &str) -> Self {
            let e = io::Error::new(io::ErrorKind::NotFound, "No such file or directory");
            self.answers.borrow_mut().entry(cmdline.to_owned()).or_default().push(Err(e));
            self
        }
    }

    impl Runner for FakeRunner {
        fn run(&self, program: &str, args: &[&str], _timeout: Duration) -> io::Result<CmdOutput> {
            let line = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
            self.calls.borrow_mut().push(line.clone());
            let mut answers = self.answers.borrow_mut();
            let Some(queue) = answers.get_mut(&line) else {
                panic!("FakeRunner: no answer scripted for `{line}`");
            };
            match queue.len() {
                0 => panic!("FakeRunner: answers for `{line}` used up"),
                1 => match &queue[0] {
                    Ok(o) => Ok(o.clone()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                },
                _ => queue.remove(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_runner_captures_and_times_out() {
        let r = SystemRunner;
        let out = r.run("/bin/sh", &["-c", "echo out; echo err >&2; exit 3"], Duration::from_secs(10)).unwrap();
        assert_eq!((out.code, out.answer(), out.stderr.trim(), out.timed_out), (Some(3), "out", "err", false));
        let t = Instant::now();
        let slow = r.run("/bin/sh", &["-c", "sleep 5; echo never"], Duration::from_millis(200)).unwrap();
        assert!(slow.timed_out && slow.code.is_none());
        assert!(t.elapsed() < Duration::from_secs(2), "the sleeping grandchild was not killed");
        assert!(r.run("/nonexistent/tool", &[], Duration::from_secs(1)).is_err());
    }
}
