//! `nodeforge seed`: a NoCloud seed for one node: its name, a fresh or given instance-id,
//! optionally a kubeadm join and the overlay for first boot on a stock cloud image.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::join::{self, Join, KubeadmApi, Label, Taint};
use super::{Attachment, SeedFiles, SeedFormat, SeedIdentity, UserData, WriteFile, firstboot};
use crate::archive::{ArtifactInfo, TAR_GZ_NAME};
use crate::check::CheckedProfile;
use crate::cli::SeedConfig;
use crate::exit::ExitClass;
use crate::io::Interrupt;

#[derive(Debug, Serialize)]
pub struct SeedReport {
    pub profile: String,
    pub node: String,
    pub instance_id: String,
    pub format: SeedFormat,
    pub out_dir: PathBuf,
    pub artifact: ArtifactInfo,
    /// Whether the seed carries the overlay and unpacks it on first boot.
    pub first_boot: bool,
    /// The join, without its token.
    pub join: Option<JoinSummary>,
}

#[derive(Debug, Serialize)]
pub struct JoinSummary {
    pub api_version: &'static str,
    pub endpoint: String,
    pub ca_cert_hashes: Vec<String>,
    pub labels: Vec<String>,
    pub taints: Vec<String>,
    pub config_path: &'static str,
}

impl SeedReport {
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "seed for node {} ({}) in {}", self.node, self.profile, self.out_dir.display());
        let _ = writeln!(s, "  instance-id  {}", self.instance_id);
        let a = &self.artifact;
        let _ = writeln!(s, "  {:<12} {:>10} bytes  sha256:{}", a.name, a.size, a.sha256);
        if self.first_boot {
            let _ = writeln!(s, "  first boot   unpacks {TAR_GZ_NAME} from the seed volume");
        }
        if let Some(j) = &self.join {
            let _ = writeln!(s, "  join         {} ({}), token from --token-file", j.endpoint, j.api_version);
            for l in &j.labels {
                let _ = writeln!(s, "  label        {l}");
            }
            for t in &j.taints {
                let _ = writeln!(s, "  taint        {t}");
            }
        }
        s
    }
}

fn taint_text(t: &Taint) -> String {
    match &t.value {
        Some(v) => format!("{}={}:{:?}", t.key, v, t.effect),
        None => format!("{}:{:?}", t.key, t.effect),
    }
}

pub fn run(c: &SeedConfig, json: bool, interrupt: &Interrupt) -> Result<()> {
    let report = seed(c, interrupt)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

/// Everything is checked (profile, token, join version, overlay) before anything is written.
pub fn seed(c: &SeedConfig, interrupt: &Interrupt) -> Result<SeedReport> {
    let loaded = CheckedProfile::load(&c.profile.profile)?.logged();
    let p = &loaded.profile;

    let join = match (&c.join_endpoint, &c.token_file) {
        (Some(endpoint), Some(token_file)) => {
            let api = KubeadmApi::for_version(&p.kubernetes.version)
                .with_context(|| format!("profile {}", loaded.path.display()))
                .context(ExitClass::Profile)?;
            let token = join::read_token(token_file).context(ExitClass::Usage)?;
            let j = Join {
                node: c.node.clone(),
                endpoint: endpoint.clone(),
                token,
                ca_cert_hashes: c.ca_cert_hash.clone(),
                labels: c.labels.clone(),
                taints: c.taints.clone(),
                discovery_timeout: c.join_discovery_timeout.clone(),
            };
            Some((api, j))
        }
        // clap enforces that the join flags come together; this is a second line of defence.
        (None, None) => None,
        _ => return Err(anyhow::anyhow!("--join-endpoint and --token-file go together").context(ExitClass::Usage)),
    };

    let attachments = match &c.overlay {
        Some(path) => vec![
            Attachment::from_file(TAR_GZ_NAME, path)
                .with_context(|| format!("--overlay {}", path.display()))
                .context(ExitClass::Usage)?,
        ],
        None => Vec::new(),
    };

    let mut ud = UserData::for_profile(p);
    ud.hostname = Some(c.node.clone());
    ud.ssh_authorized_keys.extend(c.ssh_authorized_keys.iter().cloned());
    if let Some((api, j)) = &join {
        ud.write_files.push(WriteFile::secret(join::JOIN_CONFIG_PATH, j.render(*api)?));
    }
    ud.runcmd = firstboot::runcmd(p, !attachments.is_empty(), join.as_ref().map(|_| Join::command()));
    if join.is_some() {
        ud.bootcmd.push(super::Command::Shell(Join::bootcmd()));
    }
    let identity = SeedIdentity { hostname: Some(c.node.clone()), instance_id: c.instance_id.clone() };
    let files = SeedFiles::with(&loaded, &ud, &identity, attachments)?;

    std::fs::create_dir_all(&c.out).with_context(|| format!("creating {}", c.out.display()))?;
    let _out_lock = crate::output::lock_dir(&c.out, interrupt)?;
    crate::output::sweep_stale(&c.out)?;
    let dest = c.out.join(c.format.file_name());
    let mtime = c.source_date_epoch.unwrap_or(crate::archive::DEFAULT_MTIME);
    let artifact = super::write_seed(&files, c.format, &dest, mtime)?;

    Ok(SeedReport {
        profile: p.name.clone(),
        node: c.node.clone(),
        instance_id: files.instance_id().to_owned(),
        format: c.format,
        out_dir: c.out.clone(),
        artifact,
        first_boot: c.overlay.is_some(),
        join: join.map(|(api, j)| JoinSummary {
            api_version: api.api_version(),
            endpoint: j.endpoint,
            ca_cert_hashes: j.ca_cert_hashes,
            labels: j.labels.iter().map(|Label { key, value }| format!("{key}={value}")).collect(),
            taints: j.taints.iter().map(taint_text).collect(),
            config_path: join::JOIN_CONFIG_PATH,
        }),
    })
}
