//! Atomic outputs: every artifact is written to a temporary file in its destination
//! directory, flushed to disk, and renamed into place only when complete. An error or a
//! signal leaves no partial file under a final name.
//!
//! Ownership: every temporary file or work directory is locked (`flock`) by the process
//! writing it for as long as it lives, so [`sweep_stale`] removes exactly those whose owner is
//! gone, never another live build's. An output directory is locked as a whole by the build
//! writing into it ([`lock_dir`]).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::{NamedTempFile, TempDir};

use crate::io::{Interrupt, Interrupted};

/// Prefix of in-progress files; `sweep_stale` removes ones left by a killed process.
pub const TEMP_PREFIX: &str = ".nodeforge-tmp-";

/// How often a build waiting for an output directory checks again (and for Ctrl-C).
const LOCK_POLL: Duration = Duration::from_millis(100);

/// A new temporary file in `dir`, named with [`TEMP_PREFIX`] and locked by this process.
pub fn locked_temp_file(dir: &Path) -> Result<NamedTempFile> {
    let temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    temp.as_file().try_lock().with_context(|| format!("cannot lock {}", temp.path().display()))?;
    Ok(temp)
}

/// A private work directory inside an output directory, locked while it exists and removed
/// (with everything in it) when dropped.
#[derive(Debug)]
pub struct WorkDir {
    // Field order: the directory is removed before its lock is released.
    dir: TempDir,
    _lock: File,
}

impl WorkDir {
    pub fn new(parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(parent)
            .with_context(|| format!("creating a work directory in {}", parent.display()))?;
        let lock = open_for_lock(dir.path()).with_context(|| format!("opening {}", dir.path().display()))?;
        lock.try_lock().with_context(|| format!("cannot lock {}", dir.path().display()))?;
        Ok(Self { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An exclusive lock on an output directory, held while a build or a seed writes into it;
/// released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Lock `dir` (which exists) for writing, waiting, with a message on stderr, while another
/// nodeforge holds it. Ctrl-C ends the wait ([`Interrupted`]).
///
/// The lock is `flock` on the directory itself, so nothing is added to it; a reader can take
/// the same lock shared (`flock -s DIR sha256sum -c DIR/SHA256SUMS`) to read a set no build is
/// replacing.
pub fn lock_dir(dir: &Path, interrupt: &Interrupt) -> Result<DirLock> {
    let file = open_for_lock(dir).with_context(|| format!("opening {} to lock it", dir.display()))?;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => {
                if !told {
                    tracing::warn!(
                        "{} is being written by another nodeforge; waiting until it is done (Ctrl-C to give up)",
                        dir.display()
                    );
                    told = true;
                }
                if interrupt.is_set() {
                    return Err(Interrupted.into());
                }
                std::thread::sleep(LOCK_POLL);
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", dir.display())),
        }
    }
}

/// Open a file or directory only to lock it: read-only, never following a final symlink,
/// never blocking (a FIFO opens at once).
fn open_for_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW).open(path)
}

#[derive(Debug)]
pub struct AtomicFile {
    temp: BufWriter<NamedTempFile>,
    dest: PathBuf,
}

impl AtomicFile {
    /// Start writing `dest`. The temporary file lives beside it so the final rename never
    /// crosses a filesystem.
    pub fn create(dest: &Path) -> Result<Self> {
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let temp = locked_temp_file(dir)?;
        Ok(Self { temp: BufWriter::with_capacity(256 * 1024, temp), dest: dest.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.dest
    }

    /// The underlying file, for writers that need `Seek` (the FAT image).
    pub fn file_mut(&mut self) -> io::Result<&mut File> {
        self.temp.flush()?;
        Ok(self.temp.get_mut().as_file_mut())
    }

    /// Flush, fsync, set `mode`, and rename into place.
    pub fn commit(self, mode: u32) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dest = self.dest;
        let temp = self
            .temp
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", dest.display()))?;
        temp.as_file().set_permissions(fs::Permissions::from_mode(mode))?;
        temp.as_file().sync_all().with_context(|| format!("flushing {}", dest.display()))?;
        temp.persist(&dest).map_err(|e| e.error).with_context(|| format!("renaming into {}", dest.display()))?;
        if let Some(dir) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename itself durable.
            File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        Ok(dest)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// Write `bytes` to `dest` atomically.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes).with_context(|| format!("writing {}", dest.display()))?;
    f.commit(mode)
}

/// Remove the temporary files and work directories in `dir` whose owner is gone: those no
/// process holds a lock on (a live one always does). Best effort: what cannot be removed now
/// is logged and left for the next sweep.
pub fn sweep_stale(dir: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else { return Ok(()) };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let p = e.path();
        // Hold the lock while removing, so the entry cannot be taken over meanwhile.
        let owner_gone = match open_for_lock(&p) {
            Ok(f) => match f.try_lock() {
                Ok(()) => Some(f),
                Err(TryLockError::WouldBlock) => None,
                Err(TryLockError::Error(e)) => {
                    tracing::debug!(path = %p.display(), "cannot lock: {e}");
                    None
                }
            },
            // A symlink or something else that cannot be opened is nobody's temp file.
            Err(_) => None,
        };
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let symlink = e.file_type().is_ok_and(|t| t.is_symlink());
        if owner_gone.is_none() && !symlink {
            tracing::debug!(path = %p.display(), "in use by another process; left alone");
            continue;
        }
        let removed = if is_dir { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        match removed {
            Ok(()) => tracing::debug!(path = %p.display(), "removed a temporary file whose owner is gone"),
            Err(e) => tracing::warn!("cannot remove the stale {}: {e}", p.display()),
        }
    }
    Ok(())
}

/// Move a finished set of artifacts from `pending` into `out`, so that no reader can take a
/// mix of two builds for one: `checksums` (the list of the set's digests) is removed first,
/// and that made durable, then every artifact is renamed in, and `checksums` last. Whatever
/// stops this part-way (an error, a kill, a power cut) leaves no `checksums` file, so a
/// half-replaced set never verifies; if `checksums` exists, everything it lists is from the
/// set it was written with.
pub fn commit_set(pending: &Path, out: &Path, artifacts: &[&str], checksums: &str) -> Result<()> {
    let list = out.join(checksums);
    match fs::remove_file(&list) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the old {}", list.display())),
    }
    sync_dir(out).with_context(|| format!("flushing {}", out.display()))?;
    for name in artifacts {
        let (from, to) = (pending.join(name), out.join(name));
        fs::rename(&from, &to).with_context(|| format!("moving {} into place", to.display()))?;
        #[cfg(debug_assertions)]
        test_pause_between_renames();
    }
    // The artifacts' renames reach the disk before the list that vouches for them.
    sync_dir(out).with_context(|| format!("flushing {}", out.display()))?;
    fs::rename(pending.join(checksums), &list).with_context(|| format!("moving {} into place", list.display()))?;
    sync_dir(out).with_context(|| format!("flushing {}", out.display()))
}

/// Debug builds only: `NODEFORGE_TEST_COMMIT_PAUSE_MS` holds the commit after each rename,
/// so a test can kill the process between two renames on purpose.
#[cfg(debug_assertions)]
fn test_pause_between_renames() {
    if let Some(ms) = std::env::var("NODEFORGE_TEST_COMMIT_PAUSE_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_appears_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.bin");
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"partial").unwrap();
        assert!(!dest.exists());
        drop(f);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "temp file left behind");
        write_atomic(&dest, b"whole", 0o644).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"whole");
    }

    #[test]
    fn sweeping_removes_what_no_one_holds_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let live_file = locked_temp_file(dir.path()).unwrap();
        let live_dir = WorkDir::new(dir.path()).unwrap();
        // Left by a killed process: nobody holds a lock on these.
        fs::write(dir.path().join(format!("{TEMP_PREFIX}dead")), b"x").unwrap();
        fs::create_dir_all(dir.path().join(format!("{TEMP_PREFIX}deaddir/out"))).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(format!("{TEMP_PREFIX}link"))).unwrap();
        fs::write(dir.path().join("overlay.tar.gz"), b"kept").unwrap();
        sweep_stale(dir.path()).unwrap();
        let mut left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        left.sort();
        let mut want = vec![live_file.path().to_owned(), live_dir.path().to_owned(), dir.path().join("overlay.tar.gz")];
        want.sort();
        assert_eq!(left, want);
        assert!(Path::new("/etc/passwd").exists());
    }

    #[test]
    fn a_locked_directory_is_waited_for_until_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let interrupt = Interrupt::default();
        let held = lock_dir(dir.path(), &interrupt).unwrap();
        interrupt.set();
        let err = lock_dir(dir.path(), &interrupt).unwrap_err();
        assert!(err.is::<Interrupted>(), "{err:#}");
        drop(held);
        lock_dir(dir.path(), &interrupt).expect("free again");
    }
}
