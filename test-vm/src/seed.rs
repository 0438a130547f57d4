//! Reading a NoCloud seed image back: the `join` stage waits for the Node the seed names, and
//! a seed that carries the overlay says the runtime comes with cloud-init, not the image.
//!
//! nodeforge writes the seed as a FAT image labelled `cidata` (its `seed` module has a writer
//! but no reader), so this reads FAT with fatfs. An ISO9660 seed is recognised and refused
//! with a message saying what to pass instead, rather than misread as FAT.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The part of `meta-data` the harness needs.
#[derive(Debug, Deserialize)]
struct MetaData {
    #[serde(rename = "local-hostname")]
    local_hostname: Option<String>,
}

/// The `local-hostname` in the seed image's `meta-data`: the name the kubelet registers under
/// (it defaults to the hostname), unless the kubelet is told otherwise.
pub fn node_name(seed: &Path) -> Result<String> {
    let text = meta_data(seed)?;
    let meta: MetaData = serde_saphyr::from_str(&text)
        .with_context(|| format!("the meta-data in {} is not YAML cloud-init can read", seed.display()))?;
    match meta.local_hostname {
        Some(name) if !name.trim().is_empty() => Ok(name.trim().to_owned()),
        _ => bail!("the meta-data in {} has no local-hostname: pass --node-name NAME", seed.display()),
    }
}

/// Whether the seed carries the node overlay (`nodeforge seed --first-boot`): the node's
/// runtime then arrives with cloud-init's final stage, not with the image.
pub fn carries_overlay(seed: &Path) -> Result<bool> {
    let fs = open_fat(seed)?;
    for entry in fs.root_dir().iter() {
        let entry = entry.with_context(|| format!("listing the seed image {}", seed.display()))?;
        if entry.file_name().eq_ignore_ascii_case(nodeforge::archive::TAR_GZ_NAME) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn open_fat(seed: &Path) -> Result<fatfs::FileSystem<File>> {
    let mut f = File::open(seed).with_context(|| format!("opening the seed image {}", seed.display()))?;
    if is_iso9660(&mut f)? {
        bail!("{} is an ISO9660 seed: test-vm reads only FAT seeds so far; pass --node-name NAME", seed.display());
    }
    f.seek(SeekFrom::Start(0)).with_context(|| format!("reading {}", seed.display()))?;
    fatfs::FileSystem::new(f, fatfs::FsOptions::new())
        .with_context(|| format!("{} is not a FAT seed image (nor ISO9660); pass --node-name NAME", seed.display()))
}

/// The `meta-data` file of a FAT seed image.
pub fn meta_data(seed: &Path) -> Result<String> {
    let fs = open_fat(seed)?;
    let mut text = String::new();
    // Case-insensitive lookup: a seed made with mkfs.vfat + mcopy may carry 8.3 upper case.
    fs.root_dir()
        .open_file("meta-data")
        .with_context(|| format!("no meta-data in the seed image {}", seed.display()))?
        .read_to_string(&mut text)
        .with_context(|| format!("reading meta-data from {}", seed.display()))?;
    Ok(text)
}

/// ISO9660's primary volume descriptor: `CD001` at byte 1 of sector 16 (2048-byte sectors).
fn is_iso9660(f: &mut File) -> Result<bool> {
    let mut magic = [0u8; 5];
    if f.seek(SeekFrom::Start(16 * 2048 + 1)).is_err() {
        return Ok(false);
    }
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"CD001"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e).context("reading the seed image"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn fat_image(files: &[(&str, &str)]) -> tempfile::NamedTempFile {
        let mut disk = Cursor::new(vec![0u8; 1024 * 1024]);
        fatfs::format_volume(&mut disk, fatfs::FormatVolumeOptions::new().volume_label(*b"cidata     ")).unwrap();
        disk.set_position(0);
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
            for (name, text) in files {
                fs.root_dir().create_file(name).unwrap().write_all(text.as_bytes()).unwrap();
            }
            fs.unmount().unwrap();
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), disk.into_inner()).unwrap();
        f
    }

    #[test]
    fn reads_local_hostname_from_a_fat_seed() {
        let f =
            fat_image(&[("meta-data", "instance-id: nodeforge-0123\nlocal-hostname: worker-7\n"), ("user-data", "")]);
        assert_eq!(node_name(f.path()).unwrap(), "worker-7");
    }

    #[test]
    fn a_first_boot_seed_carries_the_overlay() {
        let baked = fat_image(&[("meta-data", "local-hostname: a\n"), ("user-data", "")]);
        assert!(!carries_overlay(baked.path()).unwrap());
        let first_boot = fat_image(&[("meta-data", "local-hostname: a\n"), ("overlay.tar.gz", "x")]);
        assert!(carries_overlay(first_boot.path()).unwrap());
    }

    #[test]
    fn says_what_is_missing() {
        let f = fat_image(&[("meta-data", "instance-id: x\n")]);
        assert!(format!("{:#}", node_name(f.path()).unwrap_err()).contains("no local-hostname"));
        let f = fat_image(&[("user-data", "")]);
        assert!(format!("{:#}", node_name(f.path()).unwrap_err()).contains("no meta-data"));
        let zeros = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(zeros.path(), vec![0u8; 64 * 1024]).unwrap();
        assert!(format!("{:#}", node_name(zeros.path()).unwrap_err()).contains("not a FAT seed image"));
        let mut iso = vec![0u8; 17 * 2048];
        iso[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
        std::fs::write(zeros.path(), iso).unwrap();
        assert!(format!("{:#}", node_name(zeros.path()).unwrap_err()).contains("ISO9660 seed"));
    }
}
