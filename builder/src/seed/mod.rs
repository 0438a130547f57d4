//! The cloud-init NoCloud seed: `user-data`, `meta-data` and `network-config`, as files in a
//! directory (for `/var/lib/cloud/seed/nocloud/`) or as a small FAT image labelled `cidata`
//! (runtime-facts §6).
//!
//! All three documents are generated from typed structs through serde-saphyr, never from
//! string templates: it quotes the scalars PyYAML would otherwise turn into booleans, numbers
//! or dates (crates.md), so what cloud-init reads back is what was meant.

pub mod command;
pub mod firstboot;
pub mod flags;
pub mod iso;
pub mod join;

use std::fs::{self, File};
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::ArtifactInfo;
use crate::digest::Sha256Hex;
use crate::io::HashingReader;
use crate::output::{AtomicFile, write_atomic};
use crate::profile::{LoadedProfile, Profile};

pub use flags::{SEED_IMAGE_NAME, SEED_ISO_NAME, SeedFormat};

/// The header cloud-init requires to treat user-data as cloud-config (runtime-facts §6.2).
const CLOUD_CONFIG_HEADER: &str = "#cloud-config\n";

/// The label NoCloud looks for (runtime-facts §6.1); both cases are accepted.
const VOLUME_LABEL: &[u8; 11] = b"cidata     ";

/// The smallest image: the documented `mkfs.vfat` recipe gives about this much, and FAT12
/// at this size needs nothing unusual from any reader.
const MIN_IMAGE_BYTES: u64 = 1024 * 1024;

/// `#cloud-config` user-data. Every field is optional and skipped when empty, so issues that
/// need more modules add a field here (and a test against `cloud-init schema`) rather than
/// editing text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// False so cc_set_hostname applies `hostname` instead of keeping the image's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preserve_hostname: Option<bool>,
    /// True so `/etc/hosts` resolves the node's own name, which kubeadm's preflight wants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manage_etc_hosts: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_pwauth: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapConfig>,
    /// Run on every boot, early (runtime-facts §6.6).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootcmd: Vec<Command>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_files: Vec<WriteFile>,
    /// Run once per instance, in the final stage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<Command>,
}

/// cc_mounts' swap file settings.
#[derive(Debug, Clone, Serialize)]
pub struct SwapConfig {
    /// 0 means cloud-init creates no swap file.
    pub size: u64,
}

/// A bootcmd/runcmd entry: an argv list (run without a shell) or a shell line.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Command {
    Argv(Vec<String>),
    Shell(String),
}

impl Command {
    pub fn argv(args: &[&str]) -> Self {
        Command::Argv(args.iter().map(|a| (*a).to_owned()).collect())
    }
}

/// A `write_files` entry. `Debug` leaves out the content of a secret.
#[derive(Clone, Serialize)]
pub struct WriteFile {
    pub path: String,
    pub content: String,
    /// An octal string such as `"0600"`; the schema wants a string, and a bare `0600` would be
    /// read by PyYAML as the integer 384.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Write in the final stage, after users and packages exist.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub defer: bool,
}

impl std::fmt::Debug for WriteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = self.permissions.as_deref() == Some("0600");
        f.debug_struct("WriteFile")
            .field("path", &self.path)
            .field("content", if secret { &"<redacted>" } else { &self.content })
            .field("permissions", &self.permissions)
            .field("owner", &self.owner)
            .field("defer", &self.defer)
            .finish()
    }
}

impl WriteFile {
    /// A root-only file, the shape of every secret the seed carries.
    pub fn secret(path: &str, content: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            content: content.into(),
            permissions: Some("0600".into()),
            owner: Some("root:root".into()),
            defer: false,
        }
    }
}

impl UserData {
    /// What every node gets: its name, key-only SSH, and no swap.
    ///
    /// Swap: the kubelet refuses to start while swap is active (unless configured not to).
    /// `swap: {size: 0}` keeps cloud-init from creating a swap file, and `swapoff -a` as a
    /// bootcmd turns off any swap the base image enables, on every boot and before runcmd
    /// (where kubeadm will run). A `mounts` entry cannot do it for NoCloud: cc_mounts resolves
    /// the name `swap` through the datasource's block-device mapping, which NoCloud lacks.
    pub fn for_profile(profile: &Profile) -> Self {
        Self {
            hostname: Some(profile.hostname().to_owned()),
            preserve_hostname: Some(false),
            manage_etc_hosts: Some(true),
            ssh_authorized_keys: profile.seed.ssh_authorized_keys.clone(),
            ssh_pwauth: Some(false),
            swap: Some(SwapConfig { size: 0 }),
            bootcmd: vec![Command::argv(&["swapoff", "-a"])],
            write_files: Vec::new(),
            runcmd: Vec::new(),
        }
    }

    /// The user-data file: the cloud-config header, then YAML.
    pub fn render(&self) -> Result<String> {
        let yaml = serde_saphyr::to_string(self).context("serialising user-data")?;
        Ok(format!("{CLOUD_CONFIG_HEADER}{yaml}"))
    }
}

#[derive(Debug, Clone, Serialize)]
struct MetaData<'a> {
    #[serde(rename = "instance-id")]
    instance_id: &'a str,
    #[serde(rename = "local-hostname")]
    local_hostname: &'a str,
}

/// Network config v2: DHCP on every Ethernet interface whose name starts with `e` (eth0,
/// ens3, enp0s2), so one seed fits whatever naming scheme the image uses.
#[derive(Debug, Clone, Serialize)]
struct NetworkConfig {
    version: u8,
    ethernets: std::collections::BTreeMap<&'static str, Ethernet>,
}

#[derive(Debug, Clone, Serialize)]
struct Ethernet {
    #[serde(rename = "match")]
    matches: Match,
    dhcp4: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Match {
    name: &'static str,
}

fn network_config() -> Result<String> {
    let config = NetworkConfig {
        version: 2,
        ethernets: [("ethernet", Ethernet { matches: Match { name: "e*" }, dhcp4: true })].into(),
    };
    serde_saphyr::to_string(&config).context("serialising network-config")
}

/// A file carried on the seed volume besides the cloud-init documents (the overlay archive
/// for first boot), streamed from disk when the volume is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Hex,
}

impl Attachment {
    /// Hash `path` now; the volume's identity and the instance-id depend on its digest.
    pub fn from_file(name: &str, path: &Path) -> Result<Self> {
        let file = crate::io::open_regular(path).with_context(|| format!("opening {}", path.display()))?;
        let mut r = HashingReader::new(file);
        std::io::copy(&mut r, &mut std::io::sink()).with_context(|| format!("reading {}", path.display()))?;
        let (sha256, size) = r.finish();
        Ok(Self { name: name.to_owned(), path: path.to_owned(), size, sha256 })
    }
}

/// Who the seed is for: the node's name and, optionally, a fixed instance-id.
#[derive(Debug, Clone, Default)]
pub struct SeedIdentity {
    /// `local-hostname`; the profile's hostname when `None`.
    pub hostname: Option<String>,
    /// The instance-id; `seed.instance_id` from the profile, else derived (see [`SeedFiles::with`]).
    pub instance_id: Option<String>,
}

/// The seed's documents, rendered. `Debug` shows sizes only: user-data may hold secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub user_data: String,
    pub meta_data: String,
    /// Optional for NoCloud; without it cloud-init falls back to DHCP on the first NIC.
    pub network_config: Option<String>,
    pub vendor_data: Option<String>,
    pub attachments: Vec<Attachment>,
}

impl std::fmt::Debug for SeedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedFiles")
            .field("user_data_bytes", &self.user_data.len())
            .field("meta_data", &self.meta_data)
            .field("network_config", &self.network_config)
            .field("vendor_data_bytes", &self.vendor_data.as_ref().map(String::len))
            .field("attachments", &self.attachments)
            .finish()
    }
}

/// The default seed for a profile.
pub fn seed_files(profile: &LoadedProfile) -> Result<SeedFiles> {
    SeedFiles::new(profile, &UserData::for_profile(&profile.profile))
}

impl SeedFiles {
    /// Render a seed with the given user-data (callers extend [`UserData::for_profile`]).
    pub fn new(profile: &LoadedProfile, user_data: &UserData) -> Result<Self> {
        Self::with(profile, user_data, &SeedIdentity::default(), Vec::new())
    }

    /// Render a seed for one node, carrying `attachments` on the volume.
    ///
    /// The instance-id is, in order: `identity.instance_id`, the profile's `seed.instance_id`,
    /// or `nodeforge-` and 16 hex digits of a SHA-256 over the profile's bytes, the rendered
    /// user-data and network-config, the hostname and each attachment's name and digest. The
    /// same inputs give the same id, and anything that changes what first boot would do
    /// changes it, which is what makes cloud-init run first boot again (runtime-facts §6.2).
    /// A new explicit id re-runs first boot with otherwise identical content: how a node is
    /// reprovisioned on the same disk.
    pub fn with(
        profile: &LoadedProfile,
        user_data: &UserData,
        identity: &SeedIdentity,
        attachments: Vec<Attachment>,
    ) -> Result<Self> {
        let user_data = user_data.render()?;
        let network_config = network_config()?;
        let hostname = identity.hostname.as_deref().unwrap_or(profile.profile.hostname());
        let instance_id = match identity.instance_id.as_ref().or(profile.profile.seed.instance_id.as_ref()) {
            Some(id) => id.clone(),
            None => {
                let mut h = Sha256::new();
                let mut parts: Vec<&[u8]> =
                    vec![&profile.sha256.0[..], user_data.as_bytes(), network_config.as_bytes()];
                // Only when it differs from the profile's, so a build's seed keeps its id.
                if identity.hostname.is_some() {
                    parts.push(hostname.as_bytes());
                }
                for a in &attachments {
                    parts.push(a.name.as_bytes());
                    parts.push(&a.sha256.0[..]);
                }
                for part in parts {
                    // Length-prefixed so the parts cannot run into each other.
                    h.update((part.len() as u64).to_be_bytes());
                    h.update(part);
                }
                format!("nodeforge-{}", &hex::encode(h.finalize())[..16])
            }
        };
        let meta = MetaData { instance_id: &instance_id, local_hostname: hostname };
        let meta_data = serde_saphyr::to_string(&meta).context("serialising meta-data")?;
        Ok(Self { user_data, meta_data, network_config: Some(network_config), vendor_data: None, attachments })
    }

    /// The instance-id written into meta-data.
    pub fn instance_id(&self) -> &str {
        self.meta_data
            .lines()
            .find_map(|l| l.strip_prefix("instance-id: "))
            .map(|v| v.trim_matches('"'))
            .unwrap_or_default()
    }

    /// The files by the names cloud-init opens, in a fixed order.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        let mut files = vec![("meta-data", self.meta_data.as_str())];
        if let Some(n) = &self.network_config {
            files.push(("network-config", n.as_str()));
        }
        files.push(("user-data", self.user_data.as_str()));
        if let Some(v) = &self.vendor_data {
            files.push(("vendor-data", v.as_str()));
        }
        files
    }

    /// Write the files into `dir` (created if missing), e.g. a `nocloud` seed directory.
    /// Mode 0600: user-data will carry secrets. Attachments are not copied.
    pub fn write_dir(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in self.files() {
            write_atomic(&dir.join(name), text.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// The FAT image's size: everything on it, plus room for the boot sector, FATs, root
    /// directory and cluster slack (about 30 KiB at 1 MiB, growing with the FATs), rounded up
    /// to whole MiB.
    fn image_size(&self) -> u64 {
        let payload: u64 = self.files().iter().map(|(_, t)| t.len() as u64).sum::<u64>()
            + self.attachments.iter().map(|a| a.size).sum::<u64>();
        (payload + payload / 8 + 256 * 1024).div_ceil(MIN_IMAGE_BYTES) * MIN_IMAGE_BYTES
    }

    /// Build the FAT image in memory and return its bytes (for small seeds and tests).
    pub fn image(&self) -> Result<Vec<u8>> {
        let size = usize::try_from(self.image_size()).context("seed too large")?;
        let mut disk = Cursor::new(vec![0u8; size]);
        self.write_fat(&mut disk)?;
        Ok(disk.into_inner())
    }

    /// Format `disk` (already [`Self::image_size`] long) and write every file into it.
    fn write_fat<D: Read + Write + Seek>(&self, disk: &mut D) -> Result<()> {
        let options = fatfs::FormatVolumeOptions::new().volume_label(*VOLUME_LABEL).volume_id(self.volume_id());
        fatfs::format_volume(&mut *disk, options).context("formatting the seed image")?;
        disk.seek(SeekFrom::Start(0)).context("rewinding the seed image")?;
        let fs = fatfs::FileSystem::new(&mut *disk, fatfs::FsOptions::new().time_provider(&FIXED_TIME))
            .context("opening the new seed image")?;
        let root = fs.root_dir();
        let texts = self.files().into_iter().map(|(n, t)| (n.to_owned(), None, t.as_bytes()));
        let attached = self.attachments.iter().map(|a| (a.name.clone(), Some(&a.path), &[][..]));
        for (name, path, bytes) in texts.chain(attached) {
            let what = || format!("writing {name} in the seed image");
            let mut f = root.create_file(&name).with_context(|| format!("creating {name} in the seed image"))?;
            f.truncate().with_context(what)?;
            match path {
                None => f.write_all(bytes).with_context(what)?,
                Some(p) => {
                    let mut src = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                    std::io::copy(&mut src, &mut f).with_context(what)?;
                }
            }
            f.flush().with_context(what)?;
        }
        drop(root);
        // Unmount clears the dirty flag fatfs sets while mounted; fsck.fat would flag it.
        fs.unmount().context("closing the seed image")?;
        Ok(())
    }

    /// The FAT serial number, from the content: reproducible, yet two different seeds
    /// attached to one machine still get different `/dev/disk/by-uuid` names.
    fn volume_id(&self) -> u32 {
        let mut h = Sha256::new();
        for (name, text) in self.files() {
            h.update(name.as_bytes());
            h.update([0]);
            h.update((text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
        for a in &self.attachments {
            h.update(a.name.as_bytes());
            h.update([0]);
            h.update(a.size.to_be_bytes());
            h.update(a.sha256.0);
        }
        let d = h.finalize();
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }
}

fn file_name(dest: &Path) -> Result<String> {
    dest.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} does not end in a UTF-8 file name", dest.display()))
}

/// Write `seed.img` atomically (mode 0600: it will carry secrets). The image is written
/// straight into the temporary file, so a large attachment is never held in memory.
pub fn write_seed_image(files: &SeedFiles, dest: &Path) -> Result<ArtifactInfo> {
    let name = file_name(dest)?;
    let mut out = AtomicFile::create(dest)?;
    {
        let f = out.file_mut().with_context(|| format!("writing {}", dest.display()))?;
        f.set_len(files.image_size()).with_context(|| format!("sizing {}", dest.display()))?;
        files.write_fat(f).with_context(|| format!("writing {}", dest.display()))?;
        f.seek(SeekFrom::Start(0))?;
    }
    let (sha256, size) = {
        let f = out.file_mut()?;
        let mut r = HashingReader::new(&mut *f);
        std::io::copy(&mut r, &mut std::io::sink()).with_context(|| format!("reading back {}", dest.display()))?;
        r.finish()
    };
    out.commit(0o600)?;
    Ok(ArtifactInfo { name, size, sha256 })
}

/// Write the seed volume in `format` to `dest` atomically, mode 0600.
pub fn write_seed(files: &SeedFiles, format: SeedFormat, dest: &Path, mtime: u64) -> Result<ArtifactInfo> {
    match format {
        SeedFormat::Vfat => write_seed_image(files, dest),
        SeedFormat::Iso => iso::write_iso(files, dest, mtime),
    }
}

/// Directory entries get the DOS epoch as their time. Given explicitly rather than relying on
/// fatfs' default, which reads the clock if anything in the build enables its `chrono`
/// feature.
#[derive(Debug)]
struct FixedTime;

static FIXED_TIME: FixedTime = FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date { year: 1980, month: 1, day: 1 }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime { date: self.get_current_date(), time: fatfs::Time { hour: 0, min: 0, sec: 0, millis: 0 } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256Hex;

    fn loaded(extra: &str) -> LoadedProfile {
        let text = format!(
            "name = \"node-a\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.7.27\"\n\
             [containerd.bundle]\nsha256 = \"{}\"\n{extra}",
            "0".repeat(64)
        );
        let profile = Profile::parse(&text).expect("test profile parses");
        LoadedProfile { path: "p.toml".into(), profile, sha256: Sha256Hex(Sha256::digest(text.as_bytes()).into()) }
    }

    #[test]
    fn user_data_is_cloud_config_with_quoted_scalars() {
        let p = loaded("[seed]\nssh_authorized_keys = [\"ssh-ed25519 AAAA k@h\"]\n");
        let mut ud = UserData::for_profile(&p.profile);
        ud.write_files.push(WriteFile::secret("/etc/x", "on\n"));
        let text = ud.render().unwrap();
        assert!(text.starts_with("#cloud-config\nhostname: node-a\n"), "{text}");
        assert!(text.contains("ssh_pwauth: false\n"), "{text}");
        assert!(text.contains("- ssh-ed25519 AAAA k@h\n"), "{text}");
        // PyYAML would read a bare 0600 as the integer 384.
        assert!(text.contains("permissions: \"0600\"\n"), "{text}");
        assert!(!text.contains("runcmd"), "empty lists are left out: {text}");
    }

    #[test]
    fn instance_id_is_stable_and_follows_the_content() {
        let p = loaded("");
        let a = seed_files(&p).unwrap();
        assert_eq!(a, seed_files(&p).unwrap());
        assert!(a.meta_data.starts_with("instance-id: nodeforge-"), "{}", a.meta_data);
        assert!(a.meta_data.ends_with("local-hostname: node-a\n"), "{}", a.meta_data);
        let b = seed_files(&loaded("[seed]\nhostname = \"other\"\n")).unwrap();
        assert_ne!(a.meta_data.lines().next(), b.meta_data.lines().next());
        let fixed = seed_files(&loaded("[seed]\ninstance_id = \"i-1\"\n")).unwrap();
        assert!(fixed.meta_data.starts_with("instance-id: i-1\n"), "{}", fixed.meta_data);
    }

    #[test]
    fn node_identity_and_attachments_set_meta_data_and_the_id() {
        let p = loaded("");
        let ud = UserData::for_profile(&p.profile);
        let node =
            |id: Option<&str>| SeedIdentity { hostname: Some("worker-7".into()), instance_id: id.map(Into::into) };
        let derived = SeedFiles::with(&p, &ud, &node(None), Vec::new()).unwrap();
        assert!(derived.meta_data.ends_with("local-hostname: worker-7\n"), "{}", derived.meta_data);
        assert_eq!(derived, SeedFiles::with(&p, &ud, &node(None), Vec::new()).unwrap());
        // The node name is part of the derived id.
        assert_ne!(derived.instance_id(), seed_files(&p).unwrap().instance_id());
        // A new instance-id changes meta-data and nothing else.
        let r2 = SeedFiles::with(&p, &ud, &node(Some("worker-7-r2")), Vec::new()).unwrap();
        assert_eq!(r2.meta_data, "instance-id: worker-7-r2\nlocal-hostname: worker-7\n");
        assert_eq!((r2.user_data.as_str(), &r2.network_config), (derived.user_data.as_str(), &derived.network_config));
        assert_ne!(r2.image().unwrap(), derived.image().unwrap());
        // The carried overlay is part of the derived id too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("o"), b"overlay").unwrap();
        let a = Attachment::from_file("overlay.tar.gz", &dir.path().join("o")).unwrap();
        let with = SeedFiles::with(&p, &ud, &node(None), vec![a]).unwrap();
        assert_ne!(with.instance_id(), derived.instance_id());
        // Debug never shows user-data.
        let mut secret = ud.clone();
        secret.write_files.push(WriteFile::secret("/etc/x", "hunter2-token"));
        let s = SeedFiles::with(&p, &secret, &node(None), Vec::new()).unwrap();
        assert!(!format!("{s:?} {secret:?}").contains("hunter2"));
    }

    #[test]
    fn image_is_reproducible_and_fat_with_the_label() {
        let files = seed_files(&loaded("")).unwrap();
        let image = files.image().unwrap();
        assert_eq!(image, files.image().unwrap());
        assert_eq!(image.len() as u64, MIN_IMAGE_BYTES);
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "cidata");
        let mut names: Vec<_> = fs.root_dir().iter().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
    }

    #[test]
    fn large_payloads_get_a_larger_image() {
        let mut files = seed_files(&loaded("")).unwrap();
        files.vendor_data = Some("#cloud-config\n# ".to_owned() + &"x".repeat(3 << 20) + "\n");
        let image = files.image().unwrap();
        assert!(image.len() > 3 << 20);
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut fs.root_dir().open_file("vendor-data").unwrap(), &mut text).unwrap();
        assert_eq!(Some(text), files.vendor_data);
    }
}
