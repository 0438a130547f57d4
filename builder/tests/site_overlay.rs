//! Site overlays (`[[overlay]]`) end to end: the per-component stand-in (standin-components,
//! served over real HTTP on 127.0.0.1 and fetched through `--mirror`) built with two site
//! overlays — the shipped example, then one made here with a 0600 and a 0640 secret, a 0750
//! directory, a symlink, a setuid helper the profile allows, and a replacement for the
//! rendered /etc/crictl.yaml, from a directory and from a .tar.gz; the archives read back by
//! GNU tar and cpio, the manifest's origins, and the same bytes whatever the files' times.
//! Then hostile overlays, each refused with what is wrong and where, and nothing left in
//! `--out`. Last, the example overlay's files are checked the way their readers read them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::craft::{gz, header};
use common::http_server::TestServer;
use common::standin::{repo_root, standin};
use common::{nodeforge, s, text};
use serde_json::Value;

/// The site's replacement for the rendered crictl.yaml.
const SITE_CRICTL: &str = "runtime-endpoint: unix:///run/containerd/containerd.sock\ntimeout: 30\n";

/// The stand-in's per-component profile, written into `dir` with its image archives named
/// by absolute path (they sit beside the original), plus `overlays` appended.
fn profile_with(dir: &Path, overlays: &str) -> PathBuf {
    let st = standin();
    let original = fs::read_to_string(&st.components_profile).unwrap();
    let mut text = String::new();
    for line in original.lines() {
        match line.strip_prefix("source = \"") {
            Some(rel) => text.push_str(&format!("source = \"{}/{rel}\n", st.mirror.display())),
            None => text.push_str(&format!("{line}\n")),
        }
    }
    text.push_str(overlays);
    let path = dir.join("site-node.toml");
    fs::write(&path, text).unwrap();
    path
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The site overlay as a directory: secrets with their modes, a link, a setuid helper, and
/// the site's crictl.yaml.
fn site_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/nodeforge-site")).unwrap();
    fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    chmod(&root.join("etc/nodeforge-site"), 0o750);
    fs::write(root.join("etc/nodeforge-site/registry-token"), "s3cr3t-token\n").unwrap();
    chmod(&root.join("etc/nodeforge-site/registry-token"), 0o600);
    fs::write(root.join("etc/nodeforge-site/client.key"), "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    chmod(&root.join("etc/nodeforge-site/client.key"), 0o640);
    symlink("registry-token", root.join("etc/nodeforge-site/token")).unwrap();
    fs::write(root.join("usr/local/bin/site-helper"), "#!/bin/sh\nexit 0\n").unwrap();
    chmod(&root.join("usr/local/bin/site-helper"), 0o4755);
    fs::write(root.join("etc/crictl.yaml"), SITE_CRICTL).unwrap();
}

const SITE_OVERLAY: &str = "overrides = [\"etc/crictl.yaml\"]\nsetuid = [\"usr/local/bin/site-helper\"]\n";

fn build(server: &TestServer, profile: &Path, out: &Path, cache: &Path) -> std::process::Output {
    nodeforge(&["build", "--profile", s(profile), "--mirror", &server.base(), "--out", s(out)], cache)
}

/// `(mode string, owner, date, name)` per line of GNU `tar -tvzf`, in UTC.
fn tar_listing(archive: &Path) -> Vec<(String, String, String, String)> {
    let o = Command::new("tar").env("TZ", "UTC").arg("-tvzf").arg(archive).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[1].to_owned(), f[3].to_owned(), f[5..].join(" "))
        })
        .collect()
}

/// `(mode string, uid, gid, name)` per line of GNU `cpio -itv --numeric-uid-gid`.
fn cpio_listing(archive: &Path) -> Vec<(String, String, String, String)> {
    let cmd = format!("zcat '{}' | cpio -itv --quiet --numeric-uid-gid", archive.display());
    let o = Command::new("sh").arg("-c").arg(cmd).env("TZ", "UTC").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[2].to_owned(), f[3].to_owned(), f[8..].join(" "))
        })
        .collect()
}

fn mode_of<'a>(listing: &'a [(String, String, String, String)], name: &str) -> &'a (String, String, String, String) {
    listing.iter().find(|e| e.3 == name).unwrap_or_else(|| panic!("{name} not listed: {listing:?}"))
}

#[test]
fn a_site_overlay_keeps_modes_records_origins_and_builds_the_same_bytes() {
    let st = standin();
    let server = TestServer::start();
    server.serve_dir("", &st.mirror);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    site_tree(&tmp.path().join("site"));

    // From the directory, after the example overlay (by absolute path).
    let example = repo_root().join("overlays/site-example");
    let overlays = |site: &str| {
        format!("\n[[overlay]]\npath = \"{}\"\n\n[[overlay]]\npath = \"{site}\"\n{SITE_OVERLAY}", example.display())
    };
    let profile = profile_with(tmp.path(), &overlays("site"));
    let check = nodeforge(&["check", "--profile", s(&profile)], &cache);
    assert!(check.status.success(), "{}", text(&check));
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("warning[site-override]: [[overlay]] #2 site replaces /etc/crictl.yaml (`crictl` renders it)")
            && said.contains("nodeforge no longer manages that path"),
        "{said}"
    );
    let out = tmp.path().join("from-dir");
    let o = build(&server, &profile, &out, &cache);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nodeforge no longer manages that path"), "{}", text(&o));

    // GNU tar and cpio read the modes back, root-owned, at the build's time (1980-01-01).
    let tar = tar_listing(&out.join("overlay.tar.gz"));
    for (name, mode) in [
        ("etc/nodeforge-site/", "drwxr-x---"),
        ("etc/nodeforge-site/registry-token", "-rw-------"),
        ("etc/nodeforge-site/client.key", "-rw-r-----"),
        ("etc/nodeforge-site/token -> registry-token", "lrwxrwxrwx"),
        ("usr/local/bin/site-helper", "-rwsr-xr-x"),
        ("etc/crictl.yaml", "-rw-r--r--"),
        ("etc/sysctl.d/90-site.conf", "-rw-r--r--"),
        ("etc/containerd/certs.d/registry.example.internal/hosts.toml", "-rw-r--r--"),
    ] {
        let e = mode_of(&tar, name);
        assert_eq!((e.0.as_str(), e.1.as_str(), e.2.as_str()), (mode, "root/root", "1980-01-01"), "{name}");
    }
    assert!(tar.iter().all(|e| e.1 == "root/root" && e.2 == "1980-01-01"), "{tar:?}");
    let cpio = cpio_listing(&out.join("overlay.cpio.gz"));
    for (name, mode) in [
        ("etc/nodeforge-site", "drwxr-x---"),
        ("etc/nodeforge-site/registry-token", "-rw-------"),
        ("etc/nodeforge-site/client.key", "-rw-r-----"),
        ("etc/nodeforge-site/token -> registry-token", "lrwxrwxrwx"),
        ("usr/local/bin/site-helper", "-rwsr-xr-x"),
    ] {
        let e = mode_of(&cpio, name);
        assert_eq!((e.0.as_str(), e.1.as_str(), e.2.as_str()), (mode, "0", "0"), "{name}");
    }
    assert!(cpio.iter().all(|e| e.1 == "0" && e.2 == "0"), "{cpio:?}");

    // The site's crictl.yaml won, and the node's directories kept their modes.
    let node = tmp.path().join("node");
    fs::create_dir(&node).unwrap();
    let x = Command::new("tar").arg("-xzf").arg(out.join("overlay.tar.gz")).arg("-C").arg(&node).output().unwrap();
    assert!(x.status.success(), "{}", text(&x));
    assert_eq!(fs::read_to_string(node.join("etc/crictl.yaml")).unwrap(), SITE_CRICTL);
    assert_eq!(mode_of(&tar, "etc/").0, "drwxr-xr-x");

    // The manifest names the overlay and the member of every site entry.
    let manifest: Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let sources: Vec<&Value> =
        manifest["sources"].as_array().unwrap().iter().filter(|s| s["kind"] == "site-overlay").collect();
    assert_eq!(sources.len(), 2, "{sources:?}");
    let source = sources.iter().find(|s| s["url"] == "site").unwrap();
    let entry = |path: &str| manifest["entries"].as_array().unwrap().iter().find(|e| e["path"] == path).unwrap();
    let token = entry("/etc/nodeforge-site/registry-token");
    assert_eq!(token["mode"], "0600");
    assert_eq!(token["origin"]["kind"], "site");
    assert_eq!(token["origin"]["overlay"], "site");
    assert_eq!(token["origin"]["member"], "etc/nodeforge-site/registry-token");
    assert_eq!(token["origin"]["sha256"], source["sha256"]);
    assert_eq!(entry("/etc/crictl.yaml")["origin"]["member"], "etc/crictl.yaml");
    assert_eq!(entry("/etc/nodeforge-site/token")["target"], "registry-token");
    assert_eq!(entry("/etc")["origin"]["kind"], "parent", "a directory that exists keeps its origin");
    let sysctl = &entry("/etc/sysctl.d/90-site.conf")["origin"];
    assert_eq!((sysctl["kind"].as_str(), sysctl["overlay"].as_str()), (Some("site"), example.to_str()));

    // Again after every file's time changed: the same bytes.
    let later = filetime::FileTime::from_unix_time(2_000_000_000, 0);
    for f in ["etc/nodeforge-site/registry-token", "etc/crictl.yaml", "usr/local/bin/site-helper", "etc"] {
        filetime::set_file_times(tmp.path().join("site").join(f), later, later).unwrap();
    }
    let again = tmp.path().join("again");
    let o = build(&server, &profile, &again, &cache);
    assert!(o.status.success(), "{}", text(&o));
    for artifact in ["overlay.tar.gz", "overlay.cpio.gz", "manifest.json"] {
        assert!(fs::read(out.join(artifact)).unwrap() == fs::read(again.join(artifact)).unwrap(), "{artifact} differs");
    }

    // From a .tar.gz of the same tree, made by GNU tar with the files' own owners and times.
    let t =
        Command::new("tar").args(["-czf", "site.tar.gz", "-C", "site", "."]).current_dir(tmp.path()).output().unwrap();
    assert!(t.status.success(), "{}", text(&t));
    let tar_dir = tmp.path().join("tar");
    fs::create_dir(&tar_dir).unwrap();
    let profile = profile_with(&tar_dir, &overlays("../site.tar.gz"));
    let from_tar = tmp.path().join("from-tar");
    let o = build(&server, &profile, &from_tar, &cache);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        fs::read(out.join("overlay.tar.gz")).unwrap() == fs::read(from_tar.join("overlay.tar.gz")).unwrap(),
        "the overlay from the .tar.gz differs from the one from the directory"
    );
    let manifest: Value = serde_json::from_slice(&fs::read(from_tar.join("manifest.json")).unwrap()).unwrap();
    let sources = manifest["sources"].as_array().unwrap();
    let source = sources.iter().find(|s| s["kind"] == "site-overlay" && s["url"] == "../site.tar.gz").unwrap();
    let digest = Command::new("sha256sum").arg(tmp.path().join("site.tar.gz")).output().unwrap();
    let digest = String::from_utf8_lossy(&digest.stdout).split_whitespace().next().unwrap().to_owned();
    assert_eq!(source["sha256"].as_str(), Some(digest.as_str()));
}

/// A tar.gz of hand-written headers: (name, typeflag, link target, mode, data).
fn crafted(entries: &[(&str, u8, &str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, link, mode, data) in entries {
        out.extend_from_slice(&header(name, *t, link, data.len(), *mode));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    gz(&out)
}

/// A hostile overlay: how to make it, the `[[overlay]]` lines, the exit code, and what the
/// message must say.
struct Hostile {
    what: &'static str,
    make: fn(&Path),
    overlay: &'static str,
    code: i32,
    says: &'static [&'static str],
}

fn hostile() -> Vec<Hostile> {
    vec![
        Hostile {
            what: "a `..` member in a tar",
            make: |d| {
                fs::write(d.join("evil.tar.gz"), crafted(&[("etc/../../escape", b'0', "", 0o644, b"x")])).unwrap()
            },
            overlay: "path = \"evil.tar.gz\"\n",
            code: 5,
            says: &["[[overlay]] #1 evil.tar.gz: entry `etc/../../escape` has a `..`"],
        },
        Hostile {
            what: "an absolute member in a tar",
            make: |d| fs::write(d.join("evil.tar.gz"), crafted(&[("/etc/shadow", b'0', "", 0o600, b"x")])).unwrap(),
            overlay: "path = \"evil.tar.gz\"\n",
            code: 5,
            says: &["[[overlay]] #1 evil.tar.gz: entry `/etc/shadow` has an absolute path"],
        },
        Hostile {
            what: "a device node in a tar",
            make: |d| fs::write(d.join("evil.tar.gz"), crafted(&[("dev/sda", b'4', "", 0o660, b"")])).unwrap(),
            overlay: "path = \"evil.tar.gz\"\n",
            code: 5,
            says: &["[[overlay]] #1 evil.tar.gz: entry `dev/sda` is a block device"],
        },
        Hostile {
            what: "a setuid file the profile does not allow",
            make: |d| {
                let tgz = crafted(&[("usr/bin/", b'5', "", 0o755, b""), ("usr/bin/sudo-ish", b'0', "", 0o4755, b"x")]);
                fs::write(d.join("evil.tar.gz"), tgz).unwrap()
            },
            overlay: "path = \"evil.tar.gz\"\nsetuid = [\"usr/bin/other\"]\n",
            code: 5,
            says: &["[[overlay]] #1 evil.tar.gz: `usr/bin/sudo-ish` has mode 4755", "setuid"],
        },
        Hostile {
            what: "a symlink out of the directory",
            make: |d| {
                fs::create_dir_all(d.join("site/etc")).unwrap();
                symlink("../../../../etc/shadow", d.join("site/etc/shadow")).unwrap();
            },
            overlay: "path = \"site\"\n",
            code: 5,
            says: &[
                "[[overlay]] #1 site: symlink `etc/shadow` points outside the archive (to `../../../../etc/shadow`)",
            ],
        },
        Hostile {
            what: "a replacement without an override",
            make: |d| {
                fs::create_dir_all(d.join("site/etc/containerd")).unwrap();
                fs::write(d.join("site/etc/containerd/config.toml"), "version = 3\n").unwrap();
            },
            overlay: "path = \"site\"\n",
            code: 3,
            says: &[
                "[[overlay]] #1 site: `etc/containerd/config.toml` would replace /etc/containerd/config.toml",
                "nodeforge's `containerd-config` renderer",
                "overrides",
            ],
        },
        Hostile {
            what: "a stale override",
            make: |d| {
                fs::create_dir_all(d.join("site/etc/sysctl.d")).unwrap();
                fs::write(d.join("site/etc/sysctl.d/90-site.conf"), "vm.max_map_count = 262144\n").unwrap();
            },
            overlay: "path = \"site\"\noverrides = [\"etc/sysctl.d/90-site.conf\"]\n",
            code: 3,
            says: &["[[overlay]] #1 site: overrides lists \"etc/sysctl.d/90-site.conf\"", "stale override"],
        },
    ]
}

#[test]
fn hostile_site_overlays_are_refused_with_nothing_left_in_out() {
    let st = standin();
    let server = TestServer::start();
    server.serve_dir("", &st.mirror);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut failures = Vec::new();
    for (i, h) in hostile().into_iter().enumerate() {
        let dir = tmp.path().join(format!("case-{i}"));
        fs::create_dir(&dir).unwrap();
        (h.make)(&dir);
        let profile = profile_with(&dir, &format!("\n[[overlay]]\n{}", h.overlay));
        let out = dir.join("out");
        let o = build(&server, &profile, &out, &cache);
        let stderr = String::from_utf8_lossy(&o.stderr);
        if o.status.code() != Some(h.code) {
            failures.push(format!("{}: exit {:?}, expected {}: {}", h.what, o.status.code(), h.code, text(&o)));
        } else if let Some(missing) = h.says.iter().find(|m| !stderr.contains(*m)) {
            failures.push(format!("{}: the error does not say {missing:?}: {stderr}", h.what));
        }
        let left: Vec<_> =
            fs::read_dir(&out).map(|rd| rd.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
        if !left.is_empty() {
            failures.push(format!("{}: left {left:?} in --out", h.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_example_overlay_is_what_containerd_and_sysctl_read() {
    let root = repo_root();
    let example = root.join("overlays/site-example");
    // hosts.toml: TOML with containerd's host keys, https endpoints, a CA path on the node.
    let hosts = example.join("etc/containerd/certs.d/registry.example.internal/hosts.toml");
    let t: toml::Table = toml::from_str(&fs::read_to_string(&hosts).unwrap()).unwrap();
    const HOST_KEYS: &[&str] = &["capabilities", "ca", "client", "skip_verify", "header", "override_path"];
    for key in t.keys() {
        assert!(key == "server" || key == "host" || HOST_KEYS.contains(&key.as_str()), "unknown key {key}");
    }
    let server = t["server"].as_str().unwrap();
    assert_eq!(server, "https://registry.example.internal", "the server is the registry the directory names");
    let hosts_table = t["host"].as_table().unwrap();
    assert!(!hosts_table.is_empty());
    for (url, h) in hosts_table {
        assert!(url.starts_with("https://"), "{url}");
        for (key, v) in h.as_table().unwrap() {
            assert!(HOST_KEYS.contains(&key.as_str()), "unknown key {key} under {url}");
            if key == "capabilities" {
                let caps = v.as_array().unwrap();
                assert!(caps.iter().all(|c| ["pull", "resolve", "push"].contains(&c.as_str().unwrap())), "{caps:?}");
            }
            if key == "ca" {
                assert!(v.as_str().unwrap().starts_with("/etc/containerd/certs.d/registry.example.internal/"), "{v}");
            }
        }
    }
    // sysctl.d: comments, or `key = value` with a dotted key of the kernel's names.
    let conf = fs::read_to_string(example.join("etc/sysctl.d/90-site.conf")).unwrap();
    let mut keys = 0;
    for line in conf.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])) {
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not key = value: {line}"));
        let key = key.trim();
        assert!(
            key.split('.').count() >= 2
                && key.split('.').all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')),
            "{key}"
        );
        assert!(!value.trim().is_empty(), "{line}");
        // The kernel's own name for it exists on this host (sysctl reads /proc/sys).
        assert!(Path::new("/proc/sys").join(key.replace('.', "/")).exists(), "{key} is not a sysctl here");
        keys += 1;
    }
    assert!(keys > 0);

    // The example profile passes check (its overlay is there and is a directory). The build
    // test above reads the overlay itself.
    let profile = root.join("profiles/examples/site-overlay.toml");
    let tmp = tempfile::tempdir().unwrap();
    let o = nodeforge(&["check", "--profile", s(&profile)], &tmp.path().join("cache"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).ends_with("site-overlay.toml: ok\n"), "{}", text(&o));
}
