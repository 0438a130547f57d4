//! `nodeforge seed` end to end: the seed volume checked by the tools that read it (blkid,
//! mtools, xorriso, cloud-init schema), the JoinConfiguration checked by the real kubeadm
//! (`kubeadm config validate`, kubeadm 1.34 built from its Go module) and against kubeadm's API
//! field sets, the secrets rule, usage errors and reproducibility.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

mod common;

/// The token every test uses; it must show up only inside the seed volume.
const TOKEN: &str = "q7x2k9.v4m8n1p6r3s5t0wz";

fn need(program: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false);
    assert!(found, "`{program}` is not installed: apt-get install {package}");
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(k8s: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let profile = format!(
            "name = \"pool-a\"\n[kubernetes]\nversion = \"{k8s}\"\n[containerd]\nversion = \"1.7.27\"\n\
             [containerd.bundle]\nsha256 = \"{}\"\n[[image]]\nref = \"registry.k8s.io/pause:3.9\"\n\
             source = \"pause.tar\"\nsha256 = \"{}\"\n",
            "ab".repeat(32),
            "cd".repeat(32)
        );
        fs::write(dir.path().join("p.toml"), profile).unwrap();
        // Seeds never read the image archives; the profile check only wants them present.
        fs::write(dir.path().join("pause.tar"), "").unwrap();
        fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn seed(&self, out: &str, extra: &[&str]) -> Output {
        let hash = format!("sha256:{}", "0f".repeat(32));
        let mut c = Command::new(env!("CARGO_BIN_EXE_nodeforge"));
        c.arg("seed").arg("--profile").arg(self.path("p.toml"));
        c.args(["--node", "worker-7", "--join-endpoint", "10.0.0.10:6443", "--token-file"]);
        c.arg(self.path("token")).args(["--ca-cert-hash", &hash]);
        c.args(["--label", "example.com/pool=a", "--taint", "dedicated=batch:NoSchedule"]);
        c.arg("--out").arg(self.path(out)).args(extra);
        c.env_remove("SOURCE_DATE_EPOCH").env("NODEFORGE_CACHE_DIR", self.path("cache")).stdin(Stdio::null());
        c.output().unwrap()
    }
}

/// Copy a file out of a vfat seed with mtools.
fn mcopy(img: &Path, name: &str, to: &Path) -> Vec<u8> {
    need("mcopy", "mtools");
    let dest = to.join(format!("out-{name}"));
    let o = Command::new("mcopy").args(["-n", "-i"]).arg(img).arg(format!("::{name}")).arg(&dest).output().unwrap();
    assert!(o.status.success(), "mcopy: {}", text(&o));
    fs::read(dest).unwrap()
}

/// Copy a file out of an ISO seed with xorriso.
fn iso_extract(iso: &Path, name: &str, to: &Path) -> Vec<u8> {
    need("xorriso", "xorriso");
    let dest = to.join(format!("iso-{name}"));
    let o = Command::new("xorriso")
        .arg("-osirrox")
        .arg("on")
        .arg("-indev")
        .arg(iso)
        .arg("-extract")
        .arg(format!("/{name}"))
        .arg(&dest)
        .output()
        .unwrap();
    assert!(o.status.success(), "xorriso -extract: {}", text(&o));
    fs::read(dest).unwrap()
}

fn blkid(path: &Path) -> String {
    need("blkid", "util-linux");
    let o = Command::new("blkid").args(["-p", "-o", "export"]).arg(path).output().unwrap();
    assert!(o.status.success(), "blkid: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// user-data's runcmd, one line per entry, as cloud-init reads it.
fn runcmd(user_data: &str) -> String {
    #[derive(Deserialize)]
    struct Ud {
        runcmd: Vec<String>,
    }
    let ud: Ud = serde_saphyr::from_str(user_data.strip_prefix("#cloud-config\n").unwrap()).unwrap();
    ud.runcmd.join("\n")
}

/// The JoinConfiguration out of user-data's write_files.
fn join_yaml(user_data: &str) -> String {
    #[derive(Deserialize)]
    struct Ud {
        write_files: Vec<Wf>,
    }
    #[derive(Deserialize)]
    struct Wf {
        path: String,
        content: String,
        permissions: String,
    }
    let yaml = user_data.strip_prefix("#cloud-config\n").unwrap();
    let ud: Ud = serde_saphyr::from_str(yaml).unwrap();
    let wf = ud.write_files.into_iter().find(|w| w.path == "/etc/kubernetes/nodeforge/join.yaml").unwrap();
    assert_eq!(wf.permissions, "0600");
    wf.content
}

/// kubeadm's JoinConfiguration field sets, transcribed from the Go types in
/// kubernetes/kubernetes cmd/kubeadm/app/apis/kubeadm/v1beta3/types.go and v1beta4/types.go
/// (plus corev1.Taint). This is NOT kubeadm: no kubeadm binary exists offline. It checks
/// that every field nodeforge writes exists in that API version, with the right shape.
#[allow(dead_code)] // the fields describe the API; not all are read back
mod kubeadm {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct JoinConfiguration<A> {
        pub api_version: String,
        pub kind: String,
        pub dry_run: Option<bool>,
        pub node_registration: NodeRegistrationOptions<A>,
        pub ca_cert_path: Option<String>,
        pub discovery: Discovery,
        pub control_plane: Option<serde_json::Value>,
        pub skip_phases: Option<Vec<String>>,
        pub patches: Option<Patches>,
        /// v1beta4 only (replaces discovery.timeout); absent from v1beta3's field set, so
        /// the v1beta3 check below also asserts it is not written.
        pub timeouts: Option<serde_json::Value>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct NodeRegistrationOptions<A> {
        pub name: Option<String>,
        #[serde(rename = "criSocket")]
        pub cri_socket: Option<String>,
        pub taints: Vec<Taint>,
        pub kubelet_extra_args: Option<A>,
        pub ignore_preflight_errors: Option<Vec<String>>,
        pub image_pull_policy: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Taint {
        pub key: String,
        pub value: Option<String>,
        pub effect: String,
        pub time_added: Option<String>,
    }

    // Option fields may be absent (serde reads a missing Option as None).

    /// v1beta4's `[]Arg`.
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    pub struct Arg {
        pub name: String,
        pub value: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Discovery {
        pub bootstrap_token: Option<BootstrapTokenDiscovery>,
        pub file: Option<serde_json::Value>,
        pub tls_bootstrap_token: Option<String>,
        /// v1beta3 only.
        pub timeout: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct BootstrapTokenDiscovery {
        pub token: String,
        pub api_server_endpoint: Option<String>,
        pub ca_cert_hashes: Option<Vec<String>>,
        pub unsafe_skip_ca_verification: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Patches {
        pub directory: Option<String>,
    }
}

fn check_common<A>(c: &kubeadm::JoinConfiguration<A>) {
    assert_eq!(c.kind, "JoinConfiguration");
    let nr = &c.node_registration;
    assert_eq!(nr.name.as_deref(), Some("worker-7"));
    assert_eq!(nr.cri_socket.as_deref(), Some("unix:///run/containerd/containerd.sock"));
    assert_eq!(
        nr.taints,
        [kubeadm::Taint {
            key: "dedicated".into(),
            value: Some("batch".into()),
            effect: "NoSchedule".into(),
            time_added: None
        }]
    );
    let bt = c.discovery.bootstrap_token.as_ref().unwrap();
    assert_eq!(bt.token, TOKEN);
    assert_eq!(bt.api_server_endpoint.as_deref(), Some("10.0.0.10:6443"));
    assert_eq!(bt.ca_cert_hashes.as_deref(), Some(&[format!("sha256:{}", "0f".repeat(32))][..]));
    assert_eq!(c.patches.as_ref().unwrap().directory.as_deref(), Some("/etc/kubernetes/patches"));
}

/// kubeadm itself reads what nodeforge writes: v1beta3 (for 1.22–1.30) and v1beta4 (1.31 on),
/// each with and without a discovery timeout, through `kubeadm config validate` (strict:
/// an unknown or misplaced field fails). A negative control shows the check can fail.
#[test]
fn real_kubeadm_validates_the_join_configuration() {
    let kubeadm = common::standin::standin().bin.join("kubeadm");
    let validate = |yaml: &str, dir: &Path| {
        let f = dir.join("join.yaml");
        fs::write(&f, yaml).unwrap();
        Command::new(&kubeadm).args(["config", "validate", "--config"]).arg(&f).output().unwrap()
    };
    for (k8s, api) in [("1.30.2", "v1beta3"), ("1.34.4", "v1beta4")] {
        for extra in [&[][..], &["--join-discovery-timeout", "45s"][..]] {
            let s = Setup::new(k8s);
            let o = s.seed("out", extra);
            assert!(o.status.success(), "{}", text(&o));
            let ud = String::from_utf8(mcopy(&s.path("out/seed.img"), "user-data", s.dir.path())).unwrap();
            let yaml = join_yaml(&ud);
            assert!(yaml.contains(&format!("kubeadm.k8s.io/{api}")), "{yaml}");
            assert_eq!(yaml.contains("45s"), !extra.is_empty(), "{yaml}");
            let v = validate(&yaml, s.dir.path());
            assert!(v.status.success(), "kubeadm refused the {api} JoinConfiguration {extra:?}: {}", text(&v));
            assert!(
                !String::from_utf8_lossy(&v.stdout).contains(TOKEN)
                    && !String::from_utf8_lossy(&v.stderr).contains(TOKEN)
            );
            let typo = validate(&yaml.replace("criSocket", "criSockt"), s.dir.path());
            assert!(
                !typo.status.success() && String::from_utf8_lossy(&typo.stderr).contains("criSockt"),
                "{}",
                text(&typo)
            );
        }
    }
}

#[test]
fn join_configuration_fits_kubeadm_v1beta3_for_1_30() {
    let s = Setup::new("1.30.2");
    let o = s.seed("out", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let ud = String::from_utf8(mcopy(&s.path("out/seed.img"), "user-data", s.dir.path())).unwrap();
    let yaml = join_yaml(&ud);
    let c: kubeadm::JoinConfiguration<BTreeMap<String, String>> = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(c.api_version, "kubeadm.k8s.io/v1beta3");
    assert!(c.timeouts.is_none());
    check_common(&c);
    let args = c.node_registration.kubelet_extra_args.unwrap();
    assert_eq!(args, BTreeMap::from([("node-labels".to_owned(), "example.com/pool=a".to_owned())]));
}

#[test]
fn join_configuration_fits_kubeadm_v1beta4_for_1_31() {
    let s = Setup::new("1.31.1");
    let o = s.seed("out", &["--format", "iso"]);
    assert!(o.status.success(), "{}", text(&o));
    let ud = String::from_utf8(iso_extract(&s.path("out/seed.iso"), "user-data", s.dir.path())).unwrap();
    let yaml = join_yaml(&ud);
    let c: kubeadm::JoinConfiguration<Vec<kubeadm::Arg>> = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(c.api_version, "kubeadm.k8s.io/v1beta4");
    assert!(c.discovery.timeout.is_none());
    check_common(&c);
    assert_eq!(
        c.node_registration.kubelet_extra_args.unwrap(),
        [kubeadm::Arg { name: "node-labels".into(), value: "example.com/pool=a".into() }]
    );
    // The map form v1beta3 takes is refused by the v1beta4 shape, and vice versa.
    assert!(serde_saphyr::from_str::<kubeadm::JoinConfiguration<BTreeMap<String, String>>>(&yaml).is_err());
}

#[test]
fn vfat_seed_is_valid_cloud_config_and_joins_after_containerd_and_images() {
    need("cloud-init", "cloud-init");
    let s = Setup::new("1.30.2");
    let o = s.seed("out", &["--instance-id", "worker-7-r2", "--ssh-authorized-key", "ssh-ed25519 AAAAC3Nza k@h"]);
    assert!(o.status.success(), "{}", text(&o));
    let img = s.path("out/seed.img");
    let probe = blkid(&img);
    assert!(probe.lines().any(|l| l == "TYPE=vfat") && probe.lines().any(|l| l == "LABEL=cidata"), "{probe}");
    let meta = String::from_utf8(mcopy(&img, "meta-data", s.dir.path())).unwrap();
    assert_eq!(meta, "instance-id: worker-7-r2\nlocal-hostname: worker-7\n");
    let ud = mcopy(&img, "user-data", s.dir.path());
    let ud_path = s.path("user-data");
    fs::write(&ud_path, &ud).unwrap();
    let out = Command::new("cloud-init").args(["schema", "--config-file"]).arg(&ud_path).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Valid cloud-config") || said.contains("Valid schema"), "nothing validated:\n{said}");

    let ud = String::from_utf8(ud).unwrap();
    assert!(ud.contains("hostname: worker-7\n") && ud.contains("- ssh-ed25519 AAAAC3Nza k@h\n"), "{ud}");
    let runcmd = runcmd(&ud);
    let pos = |n: &str| runcmd.find(n).unwrap_or_else(|| panic!("{n} missing from runcmd:\n{runcmd}"));
    assert!(pos("set -eu") < pos("containerd.service"));
    assert!(pos("containerd.service") < pos("systemctl start nodeforge-preload-images.service"));
    assert!(pos("nodeforge-preload-images.service") < pos("kubeadm join --config /etc/kubernetes/nodeforge/join.yaml"));
    assert!(pos("kubeadm join") < pos("rm -f /etc/kubernetes/nodeforge/join.yaml"));
    assert!(!runcmd.contains("overlay.tar.gz"), "no --overlay, no unpacking:\n{runcmd}");
}

#[test]
fn seeds_are_reproducible_and_the_instance_id_follows_the_inputs() {
    need("xorriso", "xorriso");
    let s = Setup::new("1.30.2");
    for (out, extra) in [("a", vec![]), ("b", vec![]), ("c", vec!["--instance-id", "r2"])] {
        for fmt in ["vfat", "iso"] {
            let mut args = extra.clone();
            args.extend(["--format", fmt]);
            let o = s.seed(&format!("{out}-{fmt}"), &args);
            assert!(o.status.success(), "{}", text(&o));
        }
    }
    for (fmt, name) in [("vfat", "seed.img"), ("iso", "seed.iso")] {
        let read = |d: &str| fs::read(s.path(&format!("{d}-{fmt}/{name}"))).unwrap();
        assert_eq!(read("a"), read("b"), "{fmt}: same inputs, different bytes");
        assert_ne!(read("a"), read("c"), "{fmt}: a new instance-id must change the seed");
    }
    let iso = s.path("a-iso/seed.iso");
    let probe = blkid(&iso);
    assert!(probe.lines().any(|l| l == "TYPE=iso9660") && probe.lines().any(|l| l == "LABEL=cidata"), "{probe}");
    // Two different seeds must not share a /dev/disk/by-uuid name.
    let uuid = |probe: &str| probe.lines().find(|l| l.starts_with("UUID=")).map(str::to_owned);
    let (uuid_a, uuid_c) = (uuid(&probe), uuid(&blkid(&s.path("c-iso/seed.iso"))));
    assert!(uuid_a.is_some() && uuid_a != uuid_c, "{uuid_a:?} vs {uuid_c:?}");
    // The same documents on both volumes; the default instance-id is derived, the given one used.
    for doc in ["meta-data", "user-data", "network-config"] {
        assert_eq!(iso_extract(&iso, doc, s.dir.path()), mcopy(&s.path("a-vfat/seed.img"), doc, s.dir.path()), "{doc}");
    }
    let meta = String::from_utf8(iso_extract(&iso, "meta-data", s.dir.path())).unwrap();
    assert!(meta.starts_with("instance-id: nodeforge-"), "{meta}");
    let meta_c = String::from_utf8(iso_extract(&s.path("c-iso/seed.iso"), "meta-data", s.dir.path())).unwrap();
    assert_eq!(meta_c, "instance-id: r2\nlocal-hostname: worker-7\n");
}

/// The secrets rule: the token reaches the seed volume (0600) and nothing else: not stdout,
/// stderr (at -vv), `--json` output, error messages, or any other file in --out.
#[test]
fn the_token_appears_only_inside_the_seed_volume() {
    let s = Setup::new("1.30.2");
    let mut seen = Vec::new();
    for (out, extra) in
        [("human", vec!["-vv"]), ("json", vec!["-vv", "--json"]), ("iso", vec!["-vv", "--json", "--format", "iso"])]
    {
        let o = s.seed(out, &extra);
        assert!(o.status.success(), "{}", text(&o));
        seen.push(text(&o));
        for e in fs::read_dir(s.path(out)).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            assert!(["seed.img", "seed.iso"].contains(&p.file_name().unwrap().to_str().unwrap()), "{}", p.display());
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(seen[1].split("stdout:\n").nth(1).unwrap().split("\nstderr:").next().unwrap()).unwrap();
    assert_eq!(json["join"]["api_version"], "kubeadm.k8s.io/v1beta3");
    assert_eq!(json["node"], "worker-7");

    // Errors after the token was read: an unsupported Kubernetes version (exit 3) and an
    // unwritable --out (exit 1).
    let old = Setup::new("1.21.14");
    let o = old.seed("out", &["-vv", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("1.22 or later"), "{}", text(&o));
    seen.push(text(&o));
    fs::write(s.path("file"), "").unwrap();
    let o = s.seed("file/sub", &["-vv"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    seen.push(text(&o));
    for t in &seen {
        assert!(!t.contains(TOKEN) && !t.contains(&TOKEN[7..]), "the token leaked:\n{t}");
    }
}

#[test]
fn bad_inputs_fail_with_the_flag_named_and_exit_2() {
    let s = Setup::new("1.30.2");
    let cases: &[(&[&str], &str)] = &[
        (&["--taint", "k=v:Sometimes"], "--taint"),
        (&["--label", "node-role.kubernetes.io/worker="], "--label"),
        (&["--label", "no-equals"], "--label"),
        (&["--ca-cert-hash", "sha256:abc"], "--ca-cert-hash"),
        (&["--join-endpoint", "10.0.0.10"], "--join-endpoint"),
        (&["--instance-id", "has space"], "--instance-id"),
        (&["--ssh-authorized-key", "not a key"], "--ssh-authorized-key"),
    ];
    for (extra, flag) in cases {
        let o = s.seed("out", extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(flag), "{extra:?}: {}", text(&o));
    }
    // A malformed token: named, not quoted.
    fs::write(s.path("token"), "NOT-A-TOKEN-q7x2k9v4m8n1\n").unwrap();
    let o = s.seed("out", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--token-file") && !text(&o).contains("NOT-A-TOKEN"), "{}", text(&o));
    // A join flag alone.
    let o = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .args(["seed", "--node", "n", "--out"])
        .arg(s.path("out"))
        .arg("--profile")
        .arg(s.path("p.toml"))
        .args(["--label", "a=b"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Nothing was written by any failure.
    assert!(!s.path("out").join("seed.img").exists());
}

#[test]
fn overlay_on_the_seed_is_unpacked_by_first_boot() {
    need("cloud-init", "cloud-init");
    let s = Setup::new("1.30.2");
    let overlay: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    fs::write(s.path("overlay.tar.gz"), &overlay).unwrap();
    for fmt in ["vfat", "iso"] {
        let out = format!("fb-{fmt}");
        let o = s.seed(&out, &["--overlay", s.path("overlay.tar.gz").to_str().unwrap(), "--format", fmt]);
        assert!(o.status.success(), "{}", text(&o));
        let (ud, carried) = if fmt == "vfat" {
            let img = s.path(&format!("{out}/seed.img"));
            assert!(fs::metadata(&img).unwrap().len() > 3_000_000);
            (mcopy(&img, "user-data", s.dir.path()), mcopy(&img, "overlay.tar.gz", s.dir.path()))
        } else {
            let iso = s.path(&format!("{out}/seed.iso"));
            (iso_extract(&iso, "user-data", s.dir.path()), iso_extract(&iso, "overlay.tar.gz", s.dir.path()))
        };
        assert_eq!(carried, overlay, "{fmt}");
        let ud = String::from_utf8(ud).unwrap();
        let lines = runcmd(&ud);
        let pos = |n: &str| lines.find(n).unwrap_or_else(|| panic!("{n} missing:\n{lines}"));
        assert!(pos("LABEL=cidata") < pos("tar --no-overwrite-dir"));
        assert!(pos("tar --no-overwrite-dir") < pos("systemctl daemon-reload"));
        // The overlay may replace a running containerd (a disk that was a node): restarted.
        assert!(pos("systemd-sysctl.service") < pos("restart containerd.service"));
        assert!(pos("restart containerd.service") < pos("nodeforge-preload-images.service"));
        assert!(pos("nodeforge-preload-images.service") < pos("kubeadm join"));
        let p = s.path(&format!("{out}-user-data"));
        fs::write(&p, &ud).unwrap();
        let o = Command::new("cloud-init").args(["schema", "--config-file"]).arg(&p).output().unwrap();
        assert!(
            o.status.success() && (text(&o).contains("Valid cloud-config") || text(&o).contains("Valid schema")),
            "{}",
            text(&o)
        );
    }
}
