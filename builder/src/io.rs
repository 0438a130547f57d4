//! Streaming adapters, stacked as readers and writers: hash while the bytes pass, stop at a
//! size cap, notice an interrupt. Nothing here buffers a whole artifact. Also how input files
//! are opened: regular files only, without ever blocking in `open`.

use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::digest::Sha256Hex;

/// Hashes everything read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(self) -> (Sha256Hex, u64) {
        (Sha256Hex(self.hasher.finalize().into()), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes everything written through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    pub fn finish(self) -> (W, Sha256Hex, u64) {
        (self.inner, Sha256Hex(self.hasher.finalize().into()), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Fails the read once more than `limit` bytes have come through, naming `what`, instead of
/// truncating silently the way `Read::take` does. Guards decompression bombs and endless
/// bodies.
#[derive(Debug)]
pub struct LimitReader<R> {
    inner: R,
    remaining: u64,
    limit: u64,
    what: String,
}

impl<R: Read> LimitReader<R> {
    pub fn new(inner: R, limit: u64, what: impl Into<String>) -> Self {
        Self { inner, remaining: limit, limit, what: what.into() }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Read one byte past the cap so "exactly at the limit" is allowed and "over" is seen.
        let want = buf.len().min(usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.remaining {
            return Err(io::Error::other(SizeLimitExceeded { what: self.what.clone(), limit: self.limit }));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{what} is larger than the limit of {limit} bytes")]
pub struct SizeLimitExceeded {
    pub what: String,
    pub limit: u64,
}

/// A path that should name a regular file names something else.
#[derive(Debug, thiserror::Error)]
#[error("{path} is {kind}, not a regular file")]
pub struct NotRegularFile {
    pub path: PathBuf,
    pub kind: &'static str,
}

/// Open `path` for reading if it is a regular file (a symlink is followed), and refuse
/// anything else with [`NotRegularFile`].
///
/// The open itself never blocks: opening a FIFO for reading waits for a writer, and no
/// signal would end that wait (nodeforge handles SIGINT and SIGTERM itself, and `open`
/// restarts after a handled signal). So the file is opened with `O_NONBLOCK` and judged by
/// its type; on a regular file that flag changes nothing.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegularFile { path: path.to_owned(), kind: kind_name(kind) }))
}

fn kind_name(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// The whole of a small input file (a profile, a token, a lock file, a certificate): a
/// regular file of at most `limit` bytes, else an error naming the path.
pub fn read_small_file(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    LimitReader::new(open_regular(path)?, limit, path.display().to_string()).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Set by SIGINT/SIGTERM/SIGHUP; long loops poll it so an interrupted build unwinds through
/// its destructors (which delete temporary files) instead of dying mid-write.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal; partial output was removed")]
pub struct Interrupted;

impl Interrupt {
    /// Route the termination signals to this flag. Called once by the binary.
    pub fn install() -> io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
        Ok(Self(flag))
    }

    /// Make sure a signal ends the process even where nothing polls the flag (a read that
    /// blocks until the stall timeout, a child process): once a termination signal arrived,
    /// the process exits with 130 after `grace` if it has not ended by itself, and at once on
    /// a second signal. For the binary only: it ends the whole process.
    ///
    /// Whatever the unwinding would have removed (a work directory, a temp download) is then
    /// left for the next run to sweep; nothing partial is ever under a final name.
    pub fn exit_when_stuck(&self, grace: Duration) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            let mut seen = false;
            for _ in signals.forever() {
                if seen {
                    std::process::exit(130);
                }
                seen = true;
                let _ = std::thread::Builder::new().name("signal-grace".into()).spawn(move || {
                    std::thread::sleep(grace);
                    eprintln!("nodeforge: interrupted; stopping without waiting for the current step to finish");
                    std::process::exit(130);
                });
            }
        })?;
        Ok(())
    }

    /// Raise the flag from code: tests use it to exercise the unwinding path without a
    /// signal.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn check(&self) -> io::Result<()> {
        if self.is_set() { Err(io::Error::other(Interrupted)) } else { Ok(()) }
    }

    /// Copy `r` to `w`, checking the flag between chunks.
    pub fn copy<R: Read + ?Sized, W: Write + ?Sized>(&self, r: &mut R, w: &mut W) -> io::Result<u64> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            self.check()?;
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            w.write_all(&buf[..n])?;
            total += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_allows_exact_and_refuses_over() {
        let mut out = Vec::new();
        LimitReader::new(&b"12345"[..], 5, "x").read_to_end(&mut out).unwrap();
        let err = LimitReader::new(&b"123456"[..], 5, "the body").read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("the body is larger than the limit of 5 bytes"), "{err}");
    }

    #[test]
    fn hashing_reader_matches_sha256() {
        let mut r = HashingReader::new(&b"abc"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (d, n) = r.finish();
        assert_eq!(n, 3);
        assert_eq!(d.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
