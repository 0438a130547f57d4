//! Atomic outputs: every artifact is written to a temporary file in its destination
//! directory, flushed to disk, and renamed into place only when complete. An error or a
//! signal leaves no partial file under a final name.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// Prefix of in-progress files; `sweep_stale` removes ones left by a killed process.
pub const TEMP_PREFIX: &str = ".nodeforge-tmp-";

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
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
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

/// Remove temporary files a killed nodeforge left in `dir`.
pub fn sweep_stale(dir: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else { return Ok(()) };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let p = e.path();
            let r = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.with_context(|| format!("removing stale {}", p.display()))?;
        }
    }
    Ok(())
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
}
