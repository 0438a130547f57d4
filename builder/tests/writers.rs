//! The writers checked by the tools that consume their output: GNU tar, GNU cpio, blkid,
//! fsck.fat, mtools, cloud-init and sha256sum. A missing tool fails the test with the Debian
//! package that provides it.

// Helpers outside `#[test]` functions unwrap too; a panic in them is a failed test.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nodeforge::archive::{self, ArtifactInfo, CPIO_GZ_NAME, TAR_GZ_NAME};
use nodeforge::digest::Sha256Hex;
use nodeforge::io::Interrupt;
use nodeforge::manifest::{self, Manifest};
use nodeforge::overlay::{Content, EntryKind, Origin, Overlay};
use nodeforge::profile::{LoadedProfile, Profile, redact_url_text};
use nodeforge::seed::{self, SeedFiles, UserData, WriteFile};
use sha2::{Digest, Sha256};

const MTIME: u64 = 1_700_000_000;

/// Run `program`, failing with the package to install if it is missing.
fn run(program: &str, package: &str, args: &[&str], dir: &Path) -> Output {
    match Command::new(program).args(args).current_dir(dir).stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed: apt-get install {package}")
        }
        Err(e) => panic!("running {program}: {e}"),
    }
}

/// Run a shell pipeline; every program in it must have been checked with `need` first.
fn sh(script: &str, dir: &Path) -> Output {
    Command::new("sh").args(["-euc", script]).current_dir(dir).output().expect("sh runs")
}

fn need(program: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false);
    assert!(found, "`{program}` is not installed: apt-get install {package}");
}

/// The command succeeded and said nothing on stderr (where tar and cpio warn about an
/// archive); returns its stdout.
fn ok(out: &Output, what: &str) -> String {
    let stdout = succeeded(out, what);
    assert!(out.stderr.is_empty(), "{what} warned:\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The command succeeded; returns its stdout. For tools that narrate on stderr.
fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha(bytes: &[u8]) -> Sha256Hex {
    Sha256Hex(Sha256::digest(bytes).into())
}

fn rendered() -> Origin {
    Origin::Rendered { renderer: "test".into() }
}

/// An overlay with every kind of entry, an on-disk file, unusual modes, a name with a space
/// and a path too long for a plain tar header. `blob_dir` holds the on-disk content.
fn sample_overlay(blob_dir: &Path) -> Overlay {
    let mut o = Overlay::new();
    let blob: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let blob_path = blob_dir.join("containerd");
    fs::write(&blob_path, &blob).unwrap();
    let on_disk = Content::OnDisk { path: blob_path, size: blob.len() as u64, sha256: sha(&blob) };
    o.add_file("usr/local/bin/containerd", 0o755, on_disk, rendered()).unwrap();
    o.add_file(
        "etc/crictl.yaml",
        0o644,
        Content::Inline(b"runtime-endpoint: unix:///run/containerd/containerd.sock\n".to_vec()),
        rendered(),
    )
    .unwrap();
    o.add_file("etc/kubernetes/secret", 0o600, Content::Inline(b"token\n".to_vec()), rendered()).unwrap();
    o.add_dir("etc/kubernetes", 0o700, rendered()).unwrap();
    o.add_file("usr/local/sbin/runc", 0o4755, Content::Inline(b"#!/bin/sh\n".to_vec()), rendered()).unwrap();
    o.add_file("etc/empty file", 0o644, Content::Inline(Vec::new()), rendered()).unwrap();
    o.add_symlink("usr/local/bin/k", "/usr/bin/kubectl", rendered()).unwrap();
    o.add_symlink("usr/local/bin/ctr-link", "containerd", rendered()).unwrap();
    let long = format!("opt/cni/{}/plugin", "long-directory-name".repeat(6));
    o.add_file(&long, 0o755, Content::Inline(b"plugin".to_vec()), rendered()).unwrap();
    o
}

fn content_of(entry: &EntryKind) -> Vec<u8> {
    let EntryKind::File(c) = entry else { panic!("not a file") };
    let mut out = Vec::new();
    std::io::copy(&mut c.open().unwrap(), &mut out).unwrap();
    out
}

/// `ls -l` style permission string, as tar -tv and cpio -tv print it.
fn ls_mode(kind: &EntryKind, mode: u32) -> String {
    let mut s = String::from(match kind {
        EntryKind::Dir => 'd',
        EntryKind::File(_) => '-',
        EntryKind::Symlink(_) => 'l',
    });
    for (shift, special, set_char) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => set_char,
            (false, true) => set_char.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// What a listing should show per entry: mode string, size, name (with ` -> target`).
fn expected_listing(o: &Overlay, dir_suffix: &str) -> Vec<(String, u64, String)> {
    o.iter()
        .map(|(p, e)| {
            let (size, name) = match &e.kind {
                EntryKind::Dir => (0, format!("{}{dir_suffix}", p.as_str())),
                EntryKind::File(c) => (c.size(), p.as_str().to_owned()),
                EntryKind::Symlink(t) => (0, format!("{} -> {t}", p.as_str())),
            };
            (ls_mode(&e.kind, e.mode), size, name)
        })
        .collect()
}

/// The extracted tree matches the overlay: types, modes, bytes, link targets, mtimes.
/// GNU cpio 2.13 does not restore a directory's mtime after creating files in it, so
/// `dir_mtimes` is false there (its listing shows the archived time instead).
fn assert_tree_matches(root: &Path, o: &Overlay, dir_mtimes: bool) {
    for (p, e) in o.iter() {
        let path = root.join(p.as_str());
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("{p}: {err}"));
        match &e.kind {
            EntryKind::Dir => assert!(meta.is_dir(), "{p}"),
            EntryKind::File(_) => {
                assert!(meta.is_file(), "{p}");
                assert_eq!(fs::read(&path).unwrap(), content_of(&e.kind), "{p}");
            }
            EntryKind::Symlink(t) => {
                assert!(meta.file_type().is_symlink(), "{p}");
                assert_eq!(fs::read_link(&path).unwrap(), PathBuf::from(t), "{p}");
            }
        }
        if !matches!(e.kind, EntryKind::Symlink(_)) {
            assert_eq!(meta.permissions().mode() & 0o7777, e.mode, "{p} mode");
            if dir_mtimes || !meta.is_dir() {
                assert_eq!(meta.mtime() as u64, MTIME, "{p} mtime");
            }
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{p} owner");
        }
    }
    let count = walk(root);
    assert_eq!(count, o.len(), "extra or missing entries under {}", root.display());
}

fn walk(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            1 + if e.file_type().unwrap().is_dir() { walk(&e.path()) } else { 0 }
        })
        .sum()
}

fn write_both(o: &Overlay, dir: &Path, mtime: u64) -> [ArtifactInfo; 2] {
    archive::write_both(o, dir, mtime, &Interrupt::default()).unwrap()
}

#[test]
fn gnu_tar_lists_and_extracts_the_overlay() {
    need("tar", "tar");
    let tmp = tempfile::tempdir().unwrap();
    let o = sample_overlay(tmp.path());
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let [tar, _] = write_both(&o, &out, MTIME);
    let tgz = out.join(TAR_GZ_NAME);
    assert_eq!(tar.size, fs::metadata(&tgz).unwrap().len());
    assert_eq!(tar.sha256, sha(&fs::read(&tgz).unwrap()));

    let listing =
        ok(&run("tar", "tar", &["--utc", "--full-time", "-tvzf", tgz.to_str().unwrap()], tmp.path()), "tar -tv");
    let got: Vec<(String, u64, String)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[1], "root/root", "{l}");
            assert_eq!((f[3], f[4]), ("2023-11-14", "22:13:20"), "{l}");
            (f[0].to_owned(), f[2].parse().unwrap(), f[5..].join(" "))
        })
        .collect();
    assert_eq!(got, expected_listing(&o, "/"));

    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    ok(&run("tar", "tar", &["-C", root.to_str().unwrap(), "-xzf", tgz.to_str().unwrap()], tmp.path()), "tar -x");
    assert_tree_matches(&root, &o, true);
}

#[test]
fn gnu_cpio_lists_and_extracts_the_overlay() {
    need("cpio", "cpio");
    need("zcat", "gzip");
    let tmp = tempfile::tempdir().unwrap();
    let o = sample_overlay(tmp.path());
    let cgz = tmp.path().join(CPIO_GZ_NAME);
    archive::write_cpio_gz(&o, &cgz, MTIME, &Interrupt::default()).unwrap();

    let listing =
        ok(&sh(&format!("zcat '{}' | TZ=UTC LC_ALL=C cpio -itv --quiet", cgz.display()), tmp.path()), "cpio -itv");
    let got: Vec<(String, u64, String)> = listing
        .lines()
        .map(|l| {
            // mode, links, owner, group, size, month, day, year-or-time, name…
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!((f[2], f[3]), ("root", "root"), "{l}");
            assert_eq!(&f[5..8], ["Nov", "14", "2023"], "{l}");
            (f[0].to_owned(), f[4].parse().unwrap(), f[8..].join(" "))
        })
        .collect();
    // cpio shows a symlink's size as its target's length.
    let expected: Vec<_> = expected_listing(&o, "")
        .into_iter()
        .zip(o.iter())
        .map(|((m, s, n), (_, e))| match &e.kind {
            EntryKind::Symlink(t) => (m, t.len() as u64, n),
            _ => (m, s, n),
        })
        .collect();
    assert_eq!(got, expected);

    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    ok(&sh(&format!("zcat '{}' | cpio -idm --quiet --no-absolute-filenames", cgz.display()), &root), "cpio -idm");
    assert_tree_matches(&root, &o, false);
}

/// An initramfs is a concatenation of (compressed) cpio archives. Append ours to one GNU cpio
/// made, and check the stream still decompresses as a whole and that our archive, where it
/// starts after the first one's end, extracts over the base tree.
#[test]
fn cpio_appended_to_an_initramfs_still_extracts() {
    need("cpio", "cpio");
    need("gzip", "gzip");
    let tmp = tempfile::tempdir().unwrap();
    let o = sample_overlay(tmp.path());
    let base = tmp.path().join("base");
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::write(base.join("init"), b"#!/bin/sh\n").unwrap();
    fs::write(base.join("etc/base.conf"), b"base\n").unwrap();
    ok(
        &sh("find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -n > ../initrd.img", &base),
        "building the base initramfs",
    );
    let cgz = tmp.path().join(CPIO_GZ_NAME);
    archive::write_cpio_gz(&o, &cgz, MTIME, &Interrupt::default()).unwrap();
    ok(
        &sh(
            &format!("cat '{}' >> initrd.img && gzip -t initrd.img && zcat initrd.img > stream", cgz.display()),
            tmp.path(),
        ),
        "appending",
    );

    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    // GNU cpio stops at the first trailer and reports how many 512-byte blocks it read; GNU
    // cpio pads its archives to that block size, so ours starts right there.
    let first = ok(&sh("cpio -idm --no-absolute-filenames < ../stream 2>&1", &root), "extracting the base");
    let blocks: u64 =
        first.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("cpio said {first:?}"));
    ok(
        &sh(&format!("tail -c +{} ../stream | cpio -idm --quiet --no-absolute-filenames", blocks * 512 + 1), &root),
        "extracting the overlay",
    );
    assert_eq!(fs::read(root.join("etc/base.conf")).unwrap(), b"base\n");
    assert_eq!(fs::read(root.join("init")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::read(root.join("etc/crictl.yaml")).unwrap(), content_of(&o.get("etc/crictl.yaml").unwrap().kind));
    assert_eq!(fs::read_link(root.join("usr/local/bin/k")).unwrap(), PathBuf::from("/usr/bin/kubectl"));
}

#[test]
fn archives_are_reproducible_and_mtime_changes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let o = sample_overlay(tmp.path());
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|d| tmp.path().join(d)).collect();
    for d in &dirs {
        fs::create_dir(d).unwrap();
    }
    let a = write_both(&o, &dirs[0], MTIME);
    let b = write_both(&o, &dirs[1], MTIME);
    let c = write_both(&o, &dirs[2], MTIME + 1);
    assert_eq!(a, b);
    for name in [TAR_GZ_NAME, CPIO_GZ_NAME] {
        assert_eq!(fs::read(dirs[0].join(name)).unwrap(), fs::read(dirs[1].join(name)).unwrap(), "{name}");
    }
    assert_ne!(a[0].sha256, c[0].sha256);
    assert_ne!(a[1].sha256, c[1].sha256);
}

fn only_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_failure_mid_write_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();

    // The staged content shrinks after it was recorded.
    let o = sample_overlay(&blobs);
    fs::write(blobs.join("containerd"), b"short").unwrap();
    let err = archive::write_both(&o, &out, MTIME, &Interrupt::default()).unwrap_err();
    assert!(format!("{err:#}").contains("changed during the build"), "{err:#}");
    assert_eq!(only_entries(&out), Vec::<String>::new());

    // The staged content disappears.
    fs::remove_file(blobs.join("containerd")).unwrap();
    let err = archive::write_tar_gz(&o, &out.join(TAR_GZ_NAME), MTIME, &Interrupt::default()).unwrap_err();
    assert!(format!("{err:#}").contains("usr/local/bin/containerd"), "{err:#}");
    assert!(archive::write_cpio_gz(&o, &out.join(CPIO_GZ_NAME), MTIME, &Interrupt::default()).is_err());
    assert_eq!(only_entries(&out), Vec::<String>::new());

    // A signal.
    let o = sample_overlay(&blobs);
    let interrupt = Interrupt::default();
    interrupt.set();
    assert!(archive::write_both(&o, &out, MTIME, &interrupt).is_err());
    assert_eq!(only_entries(&out), Vec::<String>::new());
}

/// The sources the profile names, as a build that fetched them from upstream records them.
fn sources_from_profile(profile: &Profile) -> Vec<manifest::SourceRecord> {
    let mut sources: Vec<manifest::SourceRecord> = profile
        .upstream_sources()
        .into_iter()
        .map(|u| manifest::SourceRecord { kind: u.kind.to_string(), url: redact_url_text(&u.url), sha256: u.sha256 })
        .collect();
    sources.extend(profile.images.iter().map(|i| manifest::SourceRecord {
        kind: "image".into(),
        url: i.shown_source(),
        sha256: i.sha256,
    }));
    sources
}

fn profile(dir: &Path) -> LoadedProfile {
    let text = format!(
        "name = \"worker-1\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.7.27\"\n\
         [containerd.bundle]\nsha256 = \"{}\"\n[seed]\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM0 test@nodeforge\"]\n",
        "ab".repeat(32)
    );
    let path = dir.join("worker.toml");
    fs::write(&path, &text).unwrap();
    let loaded = LoadedProfile::load(&path).unwrap();
    assert_eq!(loaded.profile.name, "worker-1");
    let _: &Profile = &loaded.profile;
    loaded
}

fn extended_seed(p: &LoadedProfile) -> SeedFiles {
    let mut ud = UserData::for_profile(&p.profile);
    ud.write_files.push(WriteFile::secret("/etc/kubernetes/join-token", "yes\n"));
    ud.runcmd.push(seed::Command::argv(&["systemctl", "enable", "--now", "containerd"]));
    SeedFiles::new(p, &ud).unwrap()
}

#[test]
fn seed_image_is_a_cidata_vfat_that_mtools_and_fsck_accept() {
    need("blkid", "util-linux");
    need("fsck.fat", "dosfstools");
    need("mcopy", "mtools");
    let tmp = tempfile::tempdir().unwrap();
    let p = profile(tmp.path());
    let files = extended_seed(&p);
    let img = tmp.path().join(seed::SEED_IMAGE_NAME);
    let info = seed::write_seed_image(&files, &img).unwrap();
    assert_eq!(info.sha256, sha(&fs::read(&img).unwrap()));
    assert_eq!(fs::metadata(&img).unwrap().permissions().mode() & 0o777, 0o600);
    let img_arg = img.to_str().unwrap();

    let probe = ok(&run("blkid", "util-linux", &["-p", "-o", "export", img_arg], tmp.path()), "blkid");
    assert!(probe.lines().any(|l| l == "TYPE=vfat"), "{probe}");
    assert!(probe.lines().any(|l| l == "LABEL=cidata"), "{probe}");

    let fsck = run("fsck.fat", "dosfstools", &["-n", img_arg], tmp.path());
    let report = ok(&fsck, "fsck.fat -n");
    assert_eq!(report.lines().count(), 2, "fsck.fat found something:\n{report}");

    let dir = ok(&run("mdir", "mtools", &["-i", img_arg, "-b", "::"], tmp.path()), "mdir");
    let mut names: Vec<&str> = dir.lines().map(|l| l.trim_start_matches("::/")).collect();
    names.sort();
    assert_eq!(names, ["meta-data", "network-config", "user-data"]);
    for (name, text) in files.files() {
        let copy = tmp.path().join(format!("copy-{name}"));
        ok(
            &run("mcopy", "mtools", &["-n", "-i", img_arg, &format!("::{name}"), copy.to_str().unwrap()], tmp.path()),
            "mcopy",
        );
        assert_eq!(fs::read(&copy).unwrap(), text.as_bytes(), "{name}");
    }

    // Two builds of the same seed give the same image.
    let again = tmp.path().join("again.img");
    assert_eq!(
        seed::write_seed_image(&extended_seed(&p), &again).unwrap(),
        ArtifactInfo { name: "again.img".into(), ..info }
    );
}

/// cloud-init 22.4 (Debian 12) prints "Valid cloud-config: <path>", newer releases "Valid
/// schema <path>"; with no output at all nothing was checked (runtime-facts §6.4).
#[test]
fn cloud_init_accepts_the_user_data_and_reads_the_network_config() {
    need("cloud-init", "cloud-init");
    let tmp = tempfile::tempdir().unwrap();
    let p = profile(tmp.path());
    let files = extended_seed(&p);
    let seed_dir = tmp.path().join("nocloud");
    files.write_dir(&seed_dir).unwrap();
    assert_eq!(fs::metadata(seed_dir.join("user-data")).unwrap().permissions().mode() & 0o777, 0o600);

    let out = run("cloud-init", "cloud-init", &["schema", "--config-file", "nocloud/user-data"], tmp.path());
    let text = succeeded(&out, "cloud-init schema") + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Valid cloud-config") || text.contains("Valid schema"), "no validation happened:\n{text}");

    // cloud-init 22.4 has no schema for network-config (that came in 23.4). Instead load it
    // with PyYAML, as cloud-init does, and let cloud-init's own converter parse it and render
    // it for netplan, the renderer that understands a `match: name:` glob.
    let check = "import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); \
                 assert c == {'version': 2, 'ethernets': {'ethernet': {'match': {'name': 'e*'}, 'dhcp4': True}}}, c";
    ok(&run("/usr/bin/python3", "python3-yaml", &["-c", check, "nocloud/network-config"], tmp.path()), "PyYAML");
    let meta = "import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); \
                assert c['local-hostname'] == 'worker-1' and c['instance-id'].startswith('nodeforge-'), c";
    ok(&run("/usr/bin/python3", "python3-yaml", &["-c", meta, "nocloud/meta-data"], tmp.path()), "PyYAML");
    succeeded(
        &run(
            "cloud-init",
            "cloud-init",
            &[
                "devel",
                "net-convert",
                "-p",
                "nocloud/network-config",
                "-k",
                "yaml",
                "-D",
                "debian",
                "-O",
                "netplan",
                "-d",
                "net",
            ],
            tmp.path(),
        ),
        "cloud-init devel net-convert",
    );
    let netplan = fs::read_to_string(tmp.path().join("net/etc/netplan/50-cloud-init.yaml")).unwrap();
    assert!(netplan.contains("name: e*") && netplan.contains("dhcp4: true"), "{netplan}");
}

#[test]
fn manifest_and_sha256sums_cover_the_artifacts() {
    need("sha256sum", "coreutils");
    let tmp = tempfile::tempdir().unwrap();
    let p = profile(tmp.path());
    let o = sample_overlay(tmp.path());
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let mut artifacts = write_both(&o, &out, MTIME).to_vec();
    artifacts.push(seed::write_seed_image(&seed::seed_files(&p).unwrap(), &out.join(seed::SEED_IMAGE_NAME)).unwrap());
    let m = Manifest::new(&p, sources_from_profile(&p.profile), &o, artifacts.clone(), MTIME);
    artifacts.push(m.write(&out).unwrap());
    manifest::write_sha256sums(&out, &artifacts).unwrap();

    let check =
        ok(&run("sha256sum", "coreutils", &["-c", "--strict", manifest::SHA256SUMS_NAME], &out), "sha256sum -c");
    assert_eq!(check.lines().filter(|l| l.ends_with(": OK")).count(), 4, "{check}");

    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join(manifest::MANIFEST_NAME)).unwrap()).unwrap();
    assert_eq!(json["entries"].as_array().unwrap().len(), o.len());
    let blob = json["entries"].as_array().unwrap().iter().find(|e| e["path"] == "/usr/local/bin/containerd").unwrap();
    assert_eq!(
        blob["sha256"].as_str().unwrap(),
        o.get("usr/local/bin/containerd").map(|e| sha(&content_of(&e.kind))).unwrap().to_string()
    );
    assert_eq!(blob["mode"], "0755");
    let names: Vec<&str> = json["artifacts"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, [CPIO_GZ_NAME, TAR_GZ_NAME, seed::SEED_IMAGE_NAME]);
    // Same inputs, same manifest bytes.
    let again = Manifest::new(&p, sources_from_profile(&p.profile), &o, artifacts[..3].to_vec(), MTIME);
    assert_eq!(again.to_json().unwrap(), fs::read(out.join(manifest::MANIFEST_NAME)).unwrap());
}

/// `cargo test --release -p nodeforge --test writers -- --ignored --nocapture`: time
/// `write_both` on ~150 MB of real binaries (from `NODEFORGE_BENCH_DIR`, default /usr/bin,
/// which holds Go binaries such as containerd on a node-like host).
#[test]
#[ignore = "a measurement, not a check; run in release"]
fn write_both_throughput() {
    let src = PathBuf::from(std::env::var_os("NODEFORGE_BENCH_DIR").unwrap_or("/usr/bin".into()));
    let mut o = Overlay::new();
    let mut total = 0u64;
    let mut paths: Vec<PathBuf> = fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        let meta = fs::symlink_metadata(&path).unwrap();
        if !meta.is_file() || total + meta.len() > 150_000_000 {
            continue;
        }
        let Ok(bytes) = fs::read(&path) else { continue };
        let name = format!("usr/local/bin/{}", path.file_name().unwrap().to_string_lossy());
        let content = Content::OnDisk { path, size: bytes.len() as u64, sha256: sha(&bytes) };
        if o.add_file(&name, 0o755, content, rendered()).is_ok() {
            total += bytes.len() as u64;
        }
    }
    let out = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let [tar, cpio] = write_both(&o, out.path(), MTIME);
    let secs = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    archive::write_tar_gz(&o, &out.path().join("alone.tar.gz"), MTIME, &Interrupt::default()).unwrap();
    let tar_alone = start.elapsed().as_secs_f64();
    println!(
        "write_both: {} entries, {:.1} MB in {secs:.2} s = {:.0} MB/s of input (tar.gz alone: {tar_alone:.2} s); \
         tar.gz {:.1} MB, cpio.gz {:.1} MB",
        o.len(),
        total as f64 / 1e6,
        total as f64 / 1e6 / secs,
        tar.size as f64 / 1e6,
        cpio.size as f64 / 1e6
    );
}
