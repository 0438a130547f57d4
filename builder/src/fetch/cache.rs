//! The content-addressed cache directory and its per-digest locks.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

use super::{CachedFile, copy_interruptibly};
use crate::digest::Sha256Hex;
use crate::io::{HashingReader, Interrupt, Interrupted, NotRegularFile, open_regular};
use crate::output;

/// How often a waiting build retries a lock another build holds.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// Held shared while a temp file is created and locked, exclusively while temp files are
/// swept: a sweep never sees a new temp file in the instant before its owner locks it.
const SWEEP_LOCK: &str = "sweep.lock";

#[derive(Debug)]
pub(super) struct Cache {
    entries: PathBuf,
    tmp: PathBuf,
    locks: PathBuf,
}

impl Cache {
    pub(super) fn open(root: &Path) -> Result<Self> {
        let cache = Self { entries: root.join("sha256"), tmp: root.join("tmp"), locks: root.join("locks") };
        for dir in [&cache.entries, &cache.tmp, &cache.locks] {
            fs::create_dir_all(dir).with_context(|| format!("cannot create the cache directory {}", dir.display()))?;
        }
        cache.sweep_stale_temps();
        Ok(cache)
    }

    /// Take the lock for one digest, waiting while another thread or process holds it.
    /// Everything that reads or writes that digest's entry goes through the returned guard,
    /// so two builds sharing the cache download a file once and never see half of it.
    /// Polls rather than blocks so that Ctrl-C still works while another build holds it.
    pub(super) fn lock(&self, digest: &Sha256Hex, interrupt: &Interrupt) -> Result<LockedEntry<'_>> {
        let path = self.locks.join(format!("{digest}.lock"));
        // Lock files are never deleted: removing one while another process waits on it
        // would let a third process lock a fresh file and run alongside the second.
        let file = open_lock_file(&path)?;
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if !told {
                        tracing::info!(digest = %digest, "waiting for another nodeforge using the cache");
                        told = true;
                    }
                    if interrupt.is_set() {
                        return Err(Interrupted.into());
                    }
                    std::thread::sleep(LOCK_POLL);
                }
                Err(TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
        Ok(LockedEntry { cache: self, digest: *digest, _lock: file })
    }

    /// Remove the temp files of downloads whose process is gone (killed, or crashed): each
    /// live download holds a lock on its temp file, so an unlocked one has no owner. Best
    /// effort, and skipped while another process sweeps: what is left now goes next time.
    fn sweep_stale_temps(&self) {
        let Ok(lock) = open_lock_file(&self.locks.join(SWEEP_LOCK)) else { return };
        if lock.try_lock().is_err() {
            return;
        }
        if let Err(e) = output::sweep_stale(&self.tmp) {
            tracing::debug!("sweeping {}: {e:#}", self.tmp.display());
        }
    }
}

/// A lock file, created if missing. Opened without blocking, so a FIFO put in its place is an
/// error rather than a hang.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open the cache lock {}", path.display()))
}

/// One digest's cache entry, locked; unlocked when dropped (closing the file releases it).
#[derive(Debug)]
pub(super) struct LockedEntry<'a> {
    cache: &'a Cache,
    digest: Sha256Hex,
    _lock: File,
}

impl LockedEntry<'_> {
    fn path(&self) -> PathBuf {
        self.cache.entries.join(self.digest.to_string())
    }

    /// The cached file, hashed again now. An entry with the wrong digest (disk damage, a
    /// hand edit, a poisoned cache) is deleted with a warning, and the caller fetches anew.
    pub(super) fn lookup(&self, interrupt: &Interrupt) -> Result<Option<CachedFile>> {
        let path = self.path();
        let file = match open_regular(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.get_ref().is_some_and(|i| i.is::<NotRegularFile>()) => {
                // Nothing but nodeforge writes entries, and it writes regular files: this one
                // was put there, and is replaced like a damaged entry.
                tracing::warn!(path = %path.display(), "{e}; removing it and fetching the file again");
                let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                removed.with_context(|| format!("cannot remove {}", path.display()))?;
                return Ok(None);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open the cached {}", path.display()));
            }
        };
        let mut reader = HashingReader::new(file);
        copy_interruptibly(interrupt, &mut reader, &mut io::sink()).map_err(|e| {
            if e.is::<Interrupted>() { e } else { e.context(format!("cannot read the cached {}", path.display())) }
        })?;
        let (actual, size) = reader.finish();
        if actual == self.digest {
            return Ok(Some(CachedFile { path, sha256: actual, size }));
        }
        tracing::warn!(
            path = %path.display(),
            actual = %actual,
            "cached file does not match its digest; deleting it and fetching it again"
        );
        fs::remove_file(&path).with_context(|| format!("cannot remove the corrupt cache entry {}", path.display()))?;
        Ok(None)
    }

    /// A new, uniquely named file in the cache's temp directory, locked for as long as it is
    /// open (so a sweep by another process knows it is alive). Dropping it deletes it.
    pub(super) fn temp_file(&self) -> Result<NamedTempFile> {
        let sweep = open_lock_file(&self.cache.locks.join(SWEEP_LOCK))?;
        // A sweep holds this only while it walks the directory: milliseconds.
        sweep.lock_shared().context("cannot lock the cache's temp directory")?;
        output::locked_temp_file(&self.cache.tmp)
    }

    /// Move a verified temp file into place: fsync first so a crash cannot leave an entry
    /// whose name promises bytes that never reached the disk.
    pub(super) fn commit(self, temp: NamedTempFile, size: u64) -> Result<CachedFile> {
        let path = self.path();
        let file = temp.as_file();
        file.sync_all().with_context(|| format!("flushing {}", temp.path().display()))?;
        // Read-only, as a reminder that entries are never edited in place.
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .with_context(|| format!("setting the mode of {}", temp.path().display()))?;
        temp.persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot move the download to {}", path.display()))?;
        // Make the rename durable too; failure here only risks losing a cache entry.
        if let Err(e) = File::open(&self.cache.entries).and_then(|d| d.sync_all()) {
            tracing::debug!("cannot fsync {}: {e}", self.cache.entries.display());
        }
        Ok(CachedFile { path, sha256: self.digest, size })
    }
}
