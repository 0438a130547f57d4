//! Per-component sources end to end: containerd's `bin/` archive, runc, the CNI plugins,
//! crictl and the Kubernetes binaries, crafted from ELF stubs, served over real HTTP on
//! 127.0.0.1 under their upstream paths and fetched through `--mirror`; then `nodeforge lock`
//! against each project's checksum convention and `--locked` builds. Hostile archives of
//! each new format go through the library's selectors directly.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::craft::{RawEntry, elf, file, gz, tar};
use common::http_server::{Route, TestServer};
use common::{nodeforge, s, text};
use nodeforge::io::Interrupt;
use nodeforge::profile::{Arch, Extra};
use nodeforge::release::{
    self, ComponentRequest, Limits, Selection, UnsafeArchive, select_cni_plugins, select_containerd, select_crictl,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One crafted download: its upstream path (under the mirror) and bytes.
struct Download {
    path: String,
    bytes: Vec<u8>,
}

/// The sources of a per-component node for `arch`, binaries built for ELF `machine`.
struct Release {
    arch: &'static str,
    containerd_version: &'static str,
    k8s_version: &'static str,
    /// Extra profile text (e.g. `[node]` settings a version needs).
    extra: &'static str,
    containerd: Download,
    runc: Download,
    cni: Download,
    crictl: Download,
    kube: Vec<(&'static str, Download)>,
}

fn containerd_entries(machine: u16) -> Vec<RawEntry> {
    let mut v = containerd_2x_entries(machine);
    for b in ["containerd-shim", "containerd-shim-runc-v1"] {
        v.push(file(leak(format!("bin/{b}")), elf(machine)));
    }
    v
}

/// containerd 2.x's `bin/`: no v1 shims.
fn containerd_2x_entries(machine: u16) -> Vec<RawEntry> {
    let mut v: Vec<RawEntry> = vec![("bin/", b'5', "", vec![])];
    for b in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        v.push(file(leak(format!("bin/{b}")), elf(machine)));
    }
    v.push(file("bin/containerd-stress", elf(machine)));
    v
}

fn cni_entries(machine: u16) -> Vec<RawEntry> {
    let mut v: Vec<RawEntry> = vec![("./", b'5', "", vec![])];
    for p in ["bandwidth", "bridge", "host-local", "loopback", "portmap", "tuning"] {
        v.push(file(leak(format!("./{p}")), elf(machine)));
    }
    v.push(file("./README.md", b"# plugins\n".to_vec()));
    v.push(file("./LICENSE", b"Apache\n".to_vec()));
    v
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn release(arch: &'static str, machine: u16) -> Release {
    release_of(arch, machine, "1.7.27", "1.32.4", "", containerd_entries(machine))
}

fn release_of(
    arch: &'static str,
    machine: u16,
    containerd_version: &'static str,
    k8s_version: &'static str,
    extra: &'static str,
    containerd: Vec<RawEntry>,
) -> Release {
    let kube = ["kubelet", "kubeadm", "kubectl"]
        .into_iter()
        .map(|n| {
            // Distinct bytes per binary, so each has its own digest.
            let mut bytes = elf(machine);
            bytes.extend_from_slice(n.as_bytes());
            (n, Download { path: format!("/release/v{k8s_version}/bin/linux/{arch}/{n}"), bytes })
        })
        .collect();
    let v = containerd_version;
    Release {
        arch,
        containerd_version,
        k8s_version,
        extra,
        containerd: Download {
            path: format!("/containerd/containerd/releases/download/v{v}/containerd-{v}-linux-{arch}.tar.gz"),
            bytes: gz(&tar(&containerd)),
        },
        runc: Download {
            path: format!("/opencontainers/runc/releases/download/v1.2.5/runc.{arch}"),
            bytes: elf(machine).into_iter().chain(*b"runc").collect(),
        },
        cni: Download {
            path: format!("/containernetworking/plugins/releases/download/v1.6.2/cni-plugins-linux-{arch}-v1.6.2.tgz"),
            bytes: gz(&tar(&cni_entries(machine))),
        },
        crictl: Download {
            path: format!("/kubernetes-sigs/cri-tools/releases/download/v1.32.0/crictl-v1.32.0-linux-{arch}.tar.gz"),
            bytes: gz(&tar(&[file("crictl", elf(machine))])),
        },
        kube,
    }
}

impl Release {
    fn all(&self) -> Vec<&Download> {
        let mut v = vec![&self.containerd, &self.runc, &self.cni, &self.crictl];
        v.extend(self.kube.iter().map(|(_, d)| d));
        v
    }

    /// The profile pinning every download's digest; `crictl` decides whether [crictl] is in.
    fn profile(&self, crictl: bool) -> String {
        let mut t = format!(
            "name = \"components-{}\"\narch = \"{}\"\n\
             [kubernetes]\nversion = \"{}\"\n[kubernetes.binaries]\n",
            self.arch, self.arch, self.k8s_version
        );
        for (n, d) in &self.kube {
            t.push_str(&format!("{n} = \"{}\"\n", sha(&d.bytes)));
        }
        t.push_str(&format!(
            "[containerd]\nversion = \"{}\"\n[containerd.release]\nsha256 = \"{}\"\n\
             [runc]\nversion = \"1.2.5\"\nsha256 = \"{}\"\n\
             [cni_plugins]\nversion = \"1.6.2\"\nsha256 = \"{}\"\n",
            self.containerd_version,
            sha(&self.containerd.bytes),
            sha(&self.runc.bytes),
            sha(&self.cni.bytes)
        ));
        if crictl {
            t.push_str(&format!("[crictl]\nversion = \"1.32.0\"\nsha256 = \"{}\"\n", sha(&self.crictl.bytes)));
        }
        t.push_str(self.extra);
        t
    }

    /// Serve every download, and each project's checksum file in its own convention.
    fn serve(&self, server: &TestServer) {
        for d in self.all() {
            server.route(&d.path, Route::Bytes(d.bytes.clone()));
        }
        let name = |d: &Download| d.path.rsplit('/').next().unwrap().to_owned();
        // containerd: `<hex>  <file>` in <file>.sha256sum.
        let c = &self.containerd;
        server
            .route(&format!("{}.sha256sum", c.path), Route::Bytes(format!("{}  {}\n", sha(&c.bytes), name(c)).into()));
        // runc: one runc.sha256sum for every arch and the source tarball.
        let dir = self.runc.path.rsplit_once('/').unwrap().0;
        let other = if self.arch == "amd64" { "arm64" } else { "amd64" };
        let sums = format!(
            "{}  runc.tar.xz\n{}  runc.{other}\n{}  runc.{}\n",
            "a".repeat(64),
            "b".repeat(64),
            sha(&self.runc.bytes),
            self.arch
        );
        server.route(&format!("{dir}/runc.sha256sum"), Route::Bytes(sums.into()));
        // CNI plugins: `<hex>  <file>` in <file>.sha256.
        let n = &self.cni;
        server.route(&format!("{}.sha256", n.path), Route::Bytes(format!("{}  {}\n", sha(&n.bytes), name(n)).into()));
        // crictl and Kubernetes: the bare digest.
        for d in std::iter::once(&self.crictl).chain(self.kube.iter().map(|(_, d)| d)) {
            server.route(&format!("{}.sha256", d.path), Route::Bytes(format!("{}\n", sha(&d.bytes)).into()));
        }
    }
}

struct Setup {
    server: TestServer,
    tmp: tempfile::TempDir,
    profile: PathBuf,
}

impl Setup {
    fn new(rel: &Release, crictl: bool) -> Self {
        let server = TestServer::start();
        rel.serve(&server);
        let tmp = tempfile::tempdir().unwrap();
        let profile = tmp.path().join("node.toml");
        fs::write(&profile, rel.profile(crictl)).unwrap();
        Self { server, tmp, profile }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let base = self.server.base();
        all.extend(["--profile", s(&self.profile), "--mirror", &base]);
        nodeforge(&all, &self.tmp.path().join("cache"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// path → mode of every file entry in a build's manifest.
fn manifest_files(out: &Path) -> Vec<(String, String)> {
    let m: Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| (e["path"].as_str().unwrap().to_owned(), e["mode"].as_str().unwrap().to_owned()))
        .collect()
}

fn build_and_check(arch: &'static str, machine: u16) {
    let rel = release(arch, machine);
    let st = Setup::new(&rel, true);
    let out = st.path("out");
    let o = st.run(&["--json", "build", "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let files = manifest_files(&out);
    let mode = |p: &str| files.iter().find(|(f, _)| f == p).map(|(_, m)| m.as_str());
    for p in [
        "/usr/local/bin/containerd",
        "/usr/local/bin/containerd-shim",
        "/usr/local/bin/containerd-shim-runc-v1",
        "/usr/local/bin/containerd-shim-runc-v2",
        "/usr/local/bin/ctr",
        "/usr/local/bin/crictl",
        "/usr/local/sbin/runc",
        "/opt/cni/bin/bridge",
        "/opt/cni/bin/host-local",
        "/opt/cni/bin/loopback",
        "/opt/cni/bin/portmap",
        "/opt/cni/bin/bandwidth",
        "/opt/cni/bin/tuning",
        "/usr/bin/kubelet",
        "/usr/bin/kubeadm",
        "/usr/bin/kubectl",
    ] {
        assert_eq!(mode(p), Some("0755"), "{p} in {files:?}");
    }
    for p in [
        "/etc/systemd/system/kubelet.service",
        "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
        "/etc/crictl.yaml",
    ] {
        assert_eq!(mode(p), Some("0644"), "{p}");
    }
    for p in ["/usr/local/bin/containerd-stress", "/opt/cni/bin/README.md", "/opt/cni/bin/LICENSE"] {
        assert_eq!(mode(p), None, "{p} must not be installed");
    }
    // The overlay holds the very bytes that were served.
    let x = st.path("x");
    fs::create_dir(&x).unwrap();
    let t = Command::new("tar").args(["-xzf", s(&out.join("overlay.tar.gz")), "-C", s(&x)]).output().unwrap();
    assert!(t.status.success(), "{}", text(&t));
    assert_eq!(fs::read(x.join("usr/local/sbin/runc")).unwrap(), rel.runc.bytes);
    assert_eq!(fs::read(x.join("usr/bin/kubeadm")).unwrap(), rel.kube[1].1.bytes);

    // The report and the manifest list every source with its kind.
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> = report["sources"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["containerd", "runc", "cni-plugins", "crictl", "kubelet", "kubeadm", "kubectl"]);
    let skipped: Vec<&str> = report["skipped"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(skipped.iter().any(|s| s.ends_with(": bin/containerd-stress")), "{skipped:?}");
    let m: Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let mkinds: BTreeSet<&str> = m["sources"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(mkinds.len(), 7, "{mkinds:?}");
}

#[test]
fn amd64_per_component_build_installs_every_part() {
    build_and_check("amd64", EM_X86_64);
}

#[test]
fn arm64_per_component_build_installs_every_part() {
    build_and_check("arm64", EM_AARCH64);
}

#[test]
fn containerd_2x_per_component_build_has_no_v1_shims() {
    let rel = release_of(
        "arm64",
        EM_AARCH64,
        "2.2.1",
        "1.35.1",
        "[node]\ncgroup_version = 2\n",
        containerd_2x_entries(EM_AARCH64),
    );
    let st = Setup::new(&rel, true);
    let out = st.path("out");
    let o = st.run(&["build", "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let files = manifest_files(&out);
    let has = |p: &str| files.iter().any(|(f, _)| f == p);
    assert!(has("/usr/local/bin/containerd-shim-runc-v2") && has("/usr/local/bin/ctr") && has("/usr/bin/kubelet"));
    assert!(!has("/usr/local/bin/containerd-shim") && !has("/usr/local/bin/containerd-shim-runc-v1"));
}

#[test]
fn amd64_binary_in_an_arm64_build_is_refused_and_nothing_is_left() {
    let mut rel = release("arm64", EM_AARCH64);
    let mut entries = cni_entries(EM_AARCH64);
    entries.retain(|e| e.0 != "./portmap");
    entries.push(file("./portmap", elf(EM_X86_64)));
    rel.cni.bytes = gz(&tar(&entries));
    let st = Setup::new(&rel, true);
    let out = st.path("out");
    let o = st.run(&["build", "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cni-plugins-linux-arm64-v1.6.2.tgz: portmap is built for amd64"), "{err}");
    let left: Vec<_> = fs::read_dir(&out).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a failed build left {left:?}");
}

#[test]
fn without_crictl_the_build_warns_and_still_writes_crictl_yaml() {
    let rel = release("amd64", EM_X86_64);
    let st = Setup::new(&rel, false);
    let out = st.path("out");
    let o = st.run(&["--json", "build", "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("no [crictl]"), "{warnings}");
    let files = manifest_files(&out);
    assert!(files.iter().any(|(p, _)| p == "/etc/crictl.yaml"));
    assert!(!files.iter().any(|(p, _)| p == "/usr/local/bin/crictl"));
}

#[test]
fn lock_reads_every_checksum_convention_and_is_deterministic() {
    let rel = release("amd64", EM_X86_64);
    let st = Setup::new(&rel, true);
    let o = st.run(&["lock"]);
    assert!(o.status.success(), "{}", text(&o));
    let lock_path = st.path("node.lock");
    let first = fs::read_to_string(&lock_path).unwrap();
    let lock: toml::Table = toml::from_str(&first).unwrap();
    let sources = lock["source"].as_array().unwrap();
    assert_eq!(sources.len(), 7);
    for (src, d) in sources.iter().zip(rel.all()) {
        let url = src["url"].as_str().unwrap();
        assert!(url.starts_with("https://") && url.ends_with(&d.path), "{url}");
        assert_eq!(src["sha256"].as_str().unwrap(), sha(&d.bytes));
        assert_eq!(src["size"].as_integer().unwrap() as usize, d.bytes.len());
        assert!(!first.contains(&st.server.base()), "a mirror URL in the lock:\n{first}");
    }
    assert_eq!(
        sources[1]["checksum_url"].as_str().unwrap(),
        "https://github.com/opencontainers/runc/releases/download/v1.2.5/runc.sha256sum"
    );
    assert_eq!(lock["format"].as_integer(), Some(1));

    // The same profile gives the same bytes, also into --out.
    let again = st.path("again.lock");
    let o = st.run(&["lock", "--out", s(&again)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(fs::read_to_string(&again).unwrap(), first);

    // And a --locked build of it succeeds.
    let out = st.path("out");
    let o = st.run(&["build", "--locked", "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_pinned_digest_its_project_does_not_publish_is_refused() {
    let rel = release("amd64", EM_X86_64);
    let st = Setup::new(&rel, true);
    let dir = rel.runc.path.rsplit_once('/').unwrap().0;
    let published = "c".repeat(64);
    st.server.route(&format!("{dir}/runc.sha256sum"), Route::Bytes(format!("{published}  runc.amd64\n").into()));
    let o = st.run(&["lock"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        published.as_str(),
        &sha(&rel.runc.bytes),
        "https://github.com/opencontainers/runc/releases/download/v1.2.5/runc.amd64",
        "https://github.com/opencontainers/runc/releases/download/v1.2.5/runc.sha256sum",
    ] {
        assert!(err.contains(needle), "{needle} missing: {err}");
    }
    assert!(!st.path("node.lock").exists());
    assert_eq!(st.server.hits(&rel.runc.path), 0, "the checksum files are checked before the downloads");
}

#[test]
fn locked_refuses_a_changed_digest_and_an_extra_source_before_anything_happens() {
    let rel = release("amd64", EM_X86_64);
    let st = Setup::new(&rel, false);
    let o = st.run(&["lock"]);
    assert!(o.status.success(), "{}", text(&o));
    let hits = st.server.total_hits();

    // Change runc's digest and add [crictl].
    let changed = rel.profile(true).replace(&sha(&rel.runc.bytes), &"d".repeat(64));
    fs::write(&st.profile, changed).unwrap();
    let out = st.path("out");
    for cmd in [vec!["build", "--locked", "--out", s(&out)], vec!["fetch", "--locked"]] {
        let o = st.run(&cmd);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("runc ") && err.contains(&"d".repeat(64)) && err.contains(&sha(&rel.runc.bytes)), "{err}");
        assert!(err.contains("crictl ") && err.contains("not in the lock"), "{err}");
    }
    assert!(!out.exists(), "--out created");
    assert_eq!(st.server.total_hits(), hits, "something was downloaded");

    // A lock named with --lock that does not exist is a profile error too.
    let o = st.run(&["build", "--locked", "--lock", s(&st.path("nope.lock")), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

/// Credentials and a signature in every URL of a profile: used to fetch, and found in no
/// output stream of any command (at -vv, with --json, failing) and in no file written.
#[test]
fn credentials_in_every_url_appear_in_no_output_and_no_file() {
    let rel = release("amd64", EM_X86_64);
    let st = Setup::new(&rel, true);
    let image = b"an image archive".to_vec();
    st.server.route("/images/busybox.tar", Route::Bytes(image.clone()));
    let secret =
        |path: &str| format!("{}{path}?sig=SECRET", st.server.base().replacen("http://", "http://user:PASSWORD@", 1));
    let text_of = rel
        .profile(true)
        .replace(
            "[containerd.release]\n",
            &format!(
                "[containerd.release]\nurl = \"{}\"\n",
                secret("/containerd/containerd/releases/download/v{version}/containerd-{version}-linux-{arch}.tar.gz")
            ),
        )
        .replace(
            "[runc]\n",
            &format!("[runc]\nurl = \"{}\"\n", secret("/opencontainers/runc/releases/download/v{version}/runc.{arch}")),
        )
        .replace(
            "[cni_plugins]\n",
            &format!(
                "[cni_plugins]\nurl = \"{}\"\n",
                secret(
                    "/containernetworking/plugins/releases/download/v{version}/cni-plugins-linux-{arch}-v{version}.tgz"
                )
            ),
        )
        .replace(
            "[crictl]\n",
            &format!(
                "[crictl]\nurl = \"{}\"\n",
                secret("/kubernetes-sigs/cri-tools/releases/download/v{version}/crictl-v{version}-linux-{arch}.tar.gz")
            ),
        )
        .replace(
            "[kubernetes.binaries]\n",
            &format!("[kubernetes.binaries]\nurl = \"{}\"\n", secret("/release/v{version}/bin/linux/{arch}/{name}")),
        )
        + &format!(
            "[[image]]\nref = \"docker.io/library/busybox:1.36\"\nsource = \"{}\"\nsha256 = \"{}\"\n",
            secret("/images/busybox.tar"),
            sha(&image)
        );
    let profiles = st.path("profiles");
    fs::create_dir(&profiles).unwrap();
    let profile = profiles.join("node.toml");
    fs::write(&profile, &text_of).unwrap();
    let wrong = profiles.join("wrong.toml");
    fs::write(&wrong, text_of.replace(&sha(&rel.runc.bytes), &"e".repeat(64))).unwrap();

    let cache = st.path("cache");
    let mut outputs = Vec::new();
    let mut run = |args: &[&str], ok: bool| {
        let o = nodeforge(args, &cache);
        let all = text(&o);
        for needle in ["PASSWORD", "SECRET", "sig="] {
            assert!(!all.contains(needle), "`{needle}` in the output of {args:?}:\n{all}");
        }
        assert_eq!(o.status.success(), ok, "{args:?}: {all}");
        outputs.push((args.join(" "), all));
        o
    };
    let (p, w) = (s(&profile), s(&wrong));
    let (o1, o2, o3) = (st.path("o1"), st.path("o2"), st.path("o3"));
    let (l1, l2) = (st.path("l1.lock"), st.path("l2.lock"));
    run(&["-vv", "fetch", "--profile", p], true);
    run(&["--json", "fetch", "--profile", p], true);
    run(&["check", "--profile", p], true);
    run(&["-vv", "build", "--profile", p, "--out", s(&o1)], true);
    let report = run(&["--json", "build", "--profile", p, "--out", s(&o2)], true);
    run(&["-vv", "lock", "--profile", p, "--out", s(&l1)], true);
    run(&["--json", "lock", "--profile", p, "--out", s(&l2)], true);
    run(&["build", "--locked", "--lock", s(&l1), "--profile", p, "--out", s(&o3)], true);
    run(&["-vv", "fetch", "--profile", w], false);
    run(&["--json", "lock", "--profile", w, "--out", s(&st.path("l3.lock"))], false);

    assert_eq!(outputs.len(), 10);
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    for src in report["sources"].as_array().unwrap() {
        assert!(src["url"].as_str().unwrap().contains("REDACTED@127.0.0.1"), "{src}");
        assert!(!src["name"].as_str().unwrap().contains('?'), "{src}");
    }
    let manifest: Value = serde_json::from_slice(&fs::read(o1.join("manifest.json")).unwrap()).unwrap();
    for e in manifest["entries"].as_array().unwrap() {
        if let Some(artifact) = e["origin"]["artifact"].as_str() {
            assert!(!artifact.contains('?'), "{e}");
        }
    }
    // Every file written, whatever it is, except the profiles that hold the secrets.
    let mut files = 0;
    let mut stack = vec![st.tmp.path().to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path == profiles {
                continue;
            } else if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).unwrap();
                for needle in [&b"PASSWORD"[..], b"SECRET"] {
                    assert!(!bytes.windows(needle.len()).any(|w| w == needle), "a secret in {}", path.display());
                }
                files += 1;
            }
        }
    }
    assert!(files > 20, "only {files} files checked");
}

// ---- hostile archives of each new format, through the library ----

fn select(
    f: fn(&Path, &ComponentRequest<'_>, &Path, Limits, &Interrupt) -> anyhow::Result<Selection>,
    bytes: &[u8],
    name: &str,
    limits: Limits,
) -> anyhow::Result<Selection> {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a");
    fs::write(&archive, bytes).unwrap();
    let staging = dir.path().join("staging");
    fs::create_dir(&staging).unwrap();
    let req = ComponentRequest { name, arch: Arch::Amd64, extras: BTreeSet::<Extra>::new() };
    let r = f(&archive, &req, &staging, limits, &Interrupt::default());
    assert!(!dir.path().join("escaped").exists());
    r
}

fn refused(
    f: fn(&Path, &ComponentRequest<'_>, &Path, Limits, &Interrupt) -> anyhow::Result<Selection>,
    entries: &[RawEntry],
    name: &str,
) -> anyhow::Error {
    select(f, &gz(&tar(entries)), name, Limits::default()).expect_err("archive was accepted")
}

const CTR: &str = "containerd-1.7.27-linux-amd64.tar.gz";
const CNI: &str = "cni-plugins-linux-amd64-v1.6.2.tgz";
const CRICTL: &str = "crictl-v1.32.0-linux-amd64.tar.gz";

#[test]
fn containerd_archive_with_dotdot_or_symlink_escape_is_refused() {
    let mut v = containerd_entries(EM_X86_64);
    v.push(file("bin/../../escaped", b"x".to_vec()));
    let e = refused(select_containerd, &v, CTR);
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::DotDot { .. })), "{e}");
    assert!(e.to_string().contains(CTR) && e.to_string().contains("bin/../../escaped"), "{e}");

    let mut v = containerd_entries(EM_X86_64);
    v.push(("bin/evil", b'2', "../../etc", vec![]));
    let e = refused(select_containerd, &v, CTR);
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::SymlinkEscapes { .. })), "{e}");

    // A symlink that stays inside, then a write through it.
    let mut v = containerd_entries(EM_X86_64);
    v.push(("lib", b'2', "bin", vec![]));
    v.push(file("lib/ctr2", elf(EM_X86_64)));
    let e = refused(select_containerd, &v, CTR);
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::ThroughSymlink { .. })), "{e}");
}

#[test]
fn containerd_archive_missing_a_required_binary_names_it() {
    let mut v = containerd_entries(EM_X86_64);
    v.retain(|e| e.0 != "bin/containerd-shim-runc-v2");
    let e = format!("{:#}", refused(select_containerd, &v, CTR));
    assert!(e.contains(CTR) && e.contains("lacks bin/containerd-shim-runc-v2"), "{e}");
    // 2.x archives have no v1 shims: fine.
    let mut v = containerd_entries(EM_X86_64);
    v.retain(|e| !e.0.ends_with("containerd-shim") && !e.0.ends_with("runc-v1"));
    let sel = select(select_containerd, &gz(&tar(&v)), CTR, Limits::default()).unwrap();
    assert_eq!(sel.files.len(), 3);
}

#[test]
fn cni_archive_with_absolute_path_or_device_is_refused() {
    let mut v = cni_entries(EM_X86_64);
    v.push(file("/opt/cni/bin/evil", elf(EM_X86_64)));
    let e = refused(select_cni_plugins, &v, CNI);
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::AbsolutePath { .. })), "{e}");
    let mut v = cni_entries(EM_X86_64);
    v.push(("./null", b'3', "", vec![]));
    let e = refused(select_cni_plugins, &v, CNI);
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::SpecialFile { .. })), "{e}");
    assert!(e.to_string().contains(CNI) && e.to_string().contains("null"), "{e}");
}

#[test]
fn cni_archive_truncated_not_gzip_or_too_large_is_refused() {
    let whole = gz(&tar(&cni_entries(EM_X86_64)));
    let e = select(select_cni_plugins, &whole[..whole.len() / 2], CNI, Limits::default()).unwrap_err();
    assert!(format!("{e:#}").contains("corrupt or truncated"), "{e:#}");
    let e = select(select_cni_plugins, &tar(&cni_entries(EM_X86_64)), CNI, Limits::default()).unwrap_err();
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::NotGzip { .. })), "{e}");
    let small = Limits { max_unpacked_bytes: 2048, ..Limits::default() };
    let e = select(select_cni_plugins, &whole, CNI, small).unwrap_err();
    assert!(format!("{e:#}").contains("larger than the limit of 2048 bytes"), "{e:#}");
    let few = Limits { max_entries: 4, ..Limits::default() };
    let e = select(select_cni_plugins, &whole, CNI, few).unwrap_err();
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::TooManyEntries { .. })), "{e}");
}

#[test]
fn crictl_archive_with_a_duplicate_or_a_non_elf_crictl_is_refused() {
    let v = [file("crictl", elf(EM_X86_64)), file("./crictl", elf(EM_X86_64))];
    let e = refused(select_crictl, &v, CRICTL);
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::Duplicate { .. })), "{e}");
    let v = [file("crictl", b"#!/bin/sh\nrm -rf /\n".to_vec())];
    let e = format!("{:#}", refused(select_crictl, &v, CRICTL));
    assert!(e.contains(&format!("{CRICTL}: crictl is not an ELF executable")), "{e}");
    let v = [file("critest", elf(EM_X86_64))];
    let e = format!("{:#}", refused(select_crictl, &v, CRICTL));
    assert!(e.contains("lacks crictl"), "{e}");
}

#[test]
fn runc_must_be_a_right_sized_elf() {
    let dir = tempfile::tempdir().unwrap();
    let runc = dir.path().join("runc.amd64");
    fs::write(&runc, gz(&elf(EM_X86_64))).unwrap();
    let e = release::check_binary(&runc, "runc.amd64", Arch::Amd64, Limits::default()).unwrap_err().to_string();
    assert!(e.contains("runc.amd64 is not an ELF executable (it is gzip data"), "{e}");
    fs::write(&runc, elf(EM_X86_64).repeat(100)).unwrap();
    let small = Limits { max_file_bytes: 1000, ..Limits::default() };
    let e = release::check_binary(&runc, "runc.amd64", Arch::Amd64, small).unwrap_err().to_string();
    assert!(e.contains("runc.amd64 is 6400 bytes, larger than the limit of 1000"), "{e}");
    release::check_binary(&runc, "runc.amd64", Arch::Amd64, Limits::default()).unwrap();
    let e = release::check_binary(&runc, "runc.amd64", Arch::Arm64, Limits::default()).unwrap_err().to_string();
    assert!(e.contains("built for amd64 (EM_X86_64), not arm64"), "{e}");
}
