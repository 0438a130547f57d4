//! The seed as ISO 9660 with Joliet and Rock Ridge, volume id `cidata`: the other filesystem
//! NoCloud reads (runtime-facts §6.3). Plain ISO 9660 names cannot spell `user-data`, hence
//! both extensions.
//!
//! Written by Debian's `xorriso -as mkisofs` rather than in-process: it is the reference
//! writer, and with `SOURCE_DATE_EPOCH` set it fixes every volume and file timestamp, so the
//! same inputs give the same bytes. The volume UUID (what `/dev/disk/by-uuid` names) would
//! then be that same timestamp on every seed; it is set from a digest of the seed's content
//! instead, so two seeds attached to one machine do not collide. Owners and modes are fixed by
//! `-uid/-gid/-file-mode/-dir-mode`, so nothing of the build machine leaks in.
//!
//! The documents are staged in a private (0700) temporary directory beside the destination,
//! xorriso writes into it, and the result is made 0600, synced and renamed into place.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::{SeedFiles, file_name};
use crate::archive::ArtifactInfo;
use crate::io::HashingReader;
use crate::output::TEMP_PREFIX;

const XORRISO: &str = "xorriso";

/// A graft-point source or target with `\` and `=` escaped, as xorriso's pathspecs need.
fn escape(p: &str) -> String {
    p.replace('\\', "\\\\").replace('=', "\\=")
}

pub fn write_iso(files: &SeedFiles, dest: &Path, mtime: u64) -> Result<ArtifactInfo> {
    let name = file_name(dest)?;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir_in(dir)
        .with_context(|| format!("creating a work directory in {}", dir.display()))?;
    let staged = work.path().join("files");
    fs::create_dir(&staged)?;
    let mut pathspecs = Vec::new();
    for (doc, text) in files.files() {
        let path = staged.join(doc);
        crate::output::write_atomic(&path, text.as_bytes(), 0o600)?;
        pathspecs.push(format!("{doc}={}", escape(&path.to_string_lossy())));
    }
    for a in &files.attachments {
        pathspecs.push(format!("{}={}", escape(&a.name), escape(&a.path.to_string_lossy())));
    }
    let iso = work.path().join(&name);
    let out = Command::new(XORRISO)
        .args(["-abort_on", "FAILURE", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-R"])
        .args(["-uid", "0", "-gid", "0", "-file-mode", "0400", "-dir-mode", "0500"])
        .arg("--set_all_file_dates")
        .arg(format!("={mtime}"))
        .arg("-graft-points")
        .arg("-o")
        .arg(&iso)
        .args(&pathspecs)
        .args(["--", "-volume_date", "uuid"])
        .arg(volume_uuid(files))
        .env("SOURCE_DATE_EPOCH", mtime.to_string())
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("--format iso needs xorriso, which is not installed: apt-get install xorriso")
        }
        Err(e) => return Err(e).context("running xorriso"),
    };
    if !out.status.success() {
        // xorriso's messages name files and options, never their content.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("xorriso failed writing {} ({}):\n{}", dest.display(), out.status, tail.join("\n"));
    }
    let f = fs::File::open(&iso).with_context(|| format!("opening {}", iso.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.sync_all().with_context(|| format!("flushing {}", iso.display()))?;
    let mut r = HashingReader::new(f);
    std::io::copy(&mut r, &mut std::io::sink()).with_context(|| format!("reading back {}", iso.display()))?;
    let (sha256, size) = r.finish();
    fs::rename(&iso, dest).with_context(|| format!("renaming into {}", dest.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(ArtifactInfo { name, size, sha256 })
}

/// An ISO 9660 volume UUID derived from the seed's content. xorriso takes it as a 16-digit
/// ECMA-119 time string (`YYYYMMDDhhmmsscc`, year 1970–2999), so each field is kept in range.
fn volume_uuid(files: &SeedFiles) -> String {
    let mut h = Sha256::new();
    for (doc, text) in files.files() {
        h.update(doc.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    for a in &files.attachments {
        h.update(a.name.as_bytes());
        h.update(a.sha256.0);
    }
    let d = h.finalize();
    let n = |i: usize, m: u64| u64::from(u16::from_be_bytes([d[2 * i], d[2 * i + 1]])) % m;
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{:02}",
        1970 + n(0, 1000),
        1 + n(1, 12),
        1 + n(2, 28),
        n(3, 24),
        n(4, 60),
        n(5, 60),
        n(6, 100)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pathspecs_escape_equals_and_backslashes() {
        assert_eq!(escape(r"/tmp/a=b\c"), r"/tmp/a\=b\\c");
    }
}
