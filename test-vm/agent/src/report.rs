//! Where the protocol lines go.
//!
//! The harness gives the guest a virtio-serial port named `org.nodeforge.agent`; the agent
//! opens it once and keeps it. Without that port it falls back to `/dev/ttyS0`, opened anew
//! for every line: a long-lived handle on ttyS0 starts failing with EIO once the getty there
//! hangs the line up (vm-facts). Every line is also copied to stderr, i.e. the journal.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::protocol::{AGENT_PORT, Event, EventKind, Stage};

/// The virtio-serial port the harness names [`AGENT_PORT`].
pub fn virtio_port() -> PathBuf {
    Path::new("/dev/virtio-ports").join(AGENT_PORT)
}

pub const SERIAL_FALLBACK: &str = "/dev/ttyS0";
/// Overrides both (a file, appended to): for running the agent by hand.
pub const REPORT_ENV: &str = "NODEFORGE_AGENT_REPORT";

pub trait Sink: Send {
    fn write_line(&mut self, line: &str) -> io::Result<()>;
    fn describe(&self) -> String;
}

/// A file or port kept open for the whole run.
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    file: File,
}

impl Sink for Held {
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        // One write per line, so a line is never interleaved with another writer's bytes.
        self.file.write_all(format!("{line}\n").as_bytes())?;
        self.file.flush()
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A tty opened for each line (see the module comment on EIO).
#[derive(Debug)]
pub struct PerWrite {
    path: PathBuf,
}

impl Sink for PerWrite {
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        let mut f = OpenOptions::new().append(true).open(&self.path)?;
        // The console runs in cooked mode: CRLF keeps the lines readable in a log.
        f.write_all(format!("{line}\r\n").as_bytes())?;
        f.flush()
    }
    fn describe(&self) -> String {
        format!("{} (opened per line)", self.path.display())
    }
}

/// Collects lines in memory: for tests and for a harness embedding the stages.
#[derive(Debug, Default, Clone)]
pub struct Memory(pub Arc<Mutex<Vec<String>>>);

impl Sink for Memory {
    fn write_line(&mut self, line: &str) -> io::Result<()> {
        self.0.lock().map_err(|_| io::Error::other("report buffer poisoned"))?.push(line.to_owned());
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// The sink a guest run uses: `$NODEFORGE_AGENT_REPORT`, else the virtio port, else ttyS0.
pub fn default_sink() -> Box<dyn Sink> {
    if let Some(path) = std::env::var_os(REPORT_ENV) {
        let path = PathBuf::from(path);
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => return Box::new(Held { path, file }),
            Err(e) => eprintln!("nodeforge-agent: cannot open {}: {e}; using the serial ports", path.display()),
        }
    }
    let port = virtio_port();
    match OpenOptions::new().write(true).open(&port) {
        Ok(file) => Box::new(Held { path: port, file }),
        Err(e) => {
            eprintln!("nodeforge-agent: {}: {e}; falling back to {SERIAL_FALLBACK}", port.display());
            Box::new(PerWrite { path: Path::new(SERIAL_FALLBACK).to_owned() })
        }
    }
}

pub struct Reporter {
    sink: Box<dyn Sink>,
    started: Instant,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter").field("sink", &self.sink.describe()).finish()
    }
}

impl Reporter {
    pub fn new(sink: Box<dyn Sink>) -> Self {
        Reporter { sink, started: Instant::now() }
    }

    pub fn emit(&mut self, ev: &Event) {
        let line = ev.to_line();
        eprintln!("{line}");
        // Nothing better to do with a failed write than to say so where it can be seen;
        // the harness treats a missing `done` line as a failure.
        if let Err(e) = self.sink.write_line(&line) {
            eprintln!("nodeforge-agent: writing to {}: {e}", self.sink.describe());
        }
    }

    pub fn start(&mut self, stage: Stage) {
        self.emit(&Event { stage, event: EventKind::Start, elapsed_ms: 0, message: String::new(), detail: Map::new() });
    }

    pub fn finish(&mut self, stage: Stage, elapsed: Duration, ok: bool, message: &str, detail: Map<String, Value>) {
        let event = if ok { EventKind::Pass } else { EventKind::Fail };
        self.emit(&Event { stage, event, elapsed_ms: ms(elapsed), message: message.to_owned(), detail });
    }

    pub fn done(&mut self, ok: bool, message: &str, detail: Map<String, Value>) {
        let elapsed = self.started.elapsed();
        self.finish(Stage::Done, elapsed, ok, message, detail);
    }
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_write_and_held_sinks_write_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tty");
        std::fs::write(&p, "").unwrap();
        let mut s = PerWrite { path: p.clone() };
        s.write_line("a").unwrap();
        s.write_line("b").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\r\nb\r\n");
        let mut h = Held { path: p.clone(), file: File::create(&p).unwrap() };
        h.write_line("{}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{}\n");
    }
}
