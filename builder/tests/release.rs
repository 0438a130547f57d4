//! Hostile and well-formed release archives through `release::select_bundle`.
//!
//! Archives are crafted here byte by byte (ustar headers written by hand), because a
//! well-behaved tar writer refuses to produce most of the attacks being tested.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::path::Path;

mod common;

use common::craft::{elf, file, good_entries, gz, tar, with};
use nodeforge::io::Interrupt;
use nodeforge::profile::Arch;
use nodeforge::release::{BundleRequest, Limits, Selection, UnsafeArchive, select_bundle};
use nodeforge::version::Version;

fn run(archive_bytes: &[u8], limits: Limits) -> (anyhow::Result<Selection>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("bundle.tar.gz");
    std::fs::write(&archive, archive_bytes).unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let version: Version = "1.7.27".parse().unwrap();
    let req = BundleRequest { name: "bundle.tar.gz", version: &version, arch: Arch::Amd64, extras: BTreeSet::new() };
    let r = select_bundle(&archive, &req, &staging, limits, &Interrupt::default());
    (r, dir)
}

fn refused(entries: Vec<common::craft::RawEntry>) -> anyhow::Error {
    run(&gz(&tar(&entries)), Limits::default()).0.expect_err("archive was accepted")
}

#[test]
fn a_good_bundle_keeps_node_binaries_and_drops_the_rest() {
    let (sel, _d) = run(&gz(&tar(&good_entries())), Limits::default());
    let sel = sel.unwrap();
    let kept: Vec<_> = sel.files.iter().map(|f| f.path.as_str().to_owned()).collect();
    assert!(kept.contains(&"usr/local/bin/containerd".to_owned()));
    assert!(kept.contains(&"opt/cni/bin/bridge".to_owned()));
    assert!(!kept.iter().any(|k| k.contains("critest") || k.starts_with("etc/") || k.starts_with("opt/containerd")));
    assert!(sel.skipped.contains(&"etc/crictl.yaml".to_owned()));
    assert!(sel.files.iter().all(|f| f.mode == 0o755));
}

#[test]
fn dotdot_and_absolute_paths_are_refused() {
    let e = refused(with(file("usr/../../etc/passwd", b"x".to_vec())));
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::DotDot { .. })), "{e}");
    assert!(format!("{e:#}").contains("usr/../../etc/passwd"), "{e}");
    let e = refused(with(file("/etc/shadow", b"x".to_vec())));
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::AbsolutePath { .. })), "{e}");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let mut v = good_entries();
    v.push(("usr/local/evil", b'2', "/etc", vec![]));
    let e = refused(v);
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::SymlinkEscapes { .. })), "{e}");
    // A symlink that stays inside, then an entry written through it.
    let mut v = good_entries();
    v.push(("usr/local/inside", b'2', "bin", vec![]));
    v.push(file("usr/local/inside/x", b"x".to_vec()));
    let e = refused(v);
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::ThroughSymlink { .. })), "{e}");
}

#[test]
fn hard_links_outside_devices_and_duplicates_are_refused() {
    let e = refused(with(("usr/local/bin/link", b'1', "/etc/shadow", vec![])));
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::HardLinkOutside { .. })), "{e}");
    let e = refused(with(("usr/local/bin/link", b'1', "etc/not-in-archive", vec![])));
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::HardLinkOutside { .. })), "{e}");
    for t in [b'3', b'4', b'6'] {
        let e = refused(with(("dev/thing", t, "", vec![])));
        assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::SpecialFile { .. })), "{e}");
    }
    let e = refused(with(file("./usr/local/bin/ctr", elf(62))));
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::Duplicate { .. })), "{e}");
}

#[test]
fn non_gzip_truncated_and_oversized_archives_are_refused() {
    let e = run(&tar(&good_entries()), Limits::default()).0.unwrap_err();
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::NotGzip { .. })), "{e}");
    let whole = gz(&tar(&good_entries()));
    let e = run(&whole[..whole.len() / 2], Limits::default()).0.unwrap_err();
    assert!(format!("{e:#}").contains("corrupt or truncated"), "{e}");
    let e = run(&whole, Limits { max_unpacked_bytes: 4096, ..Limits::default() }).0.unwrap_err();
    assert!(format!("{e:#}").contains("larger than the limit of 4096 bytes"), "{e}");
    let e = run(&whole, Limits { max_entries: 3, ..Limits::default() }).0.unwrap_err();
    assert!(matches!(e.downcast_ref(), Some(UnsafeArchive::TooManyEntries { .. })), "{e}");
}

#[test]
fn wrong_arch_missing_parts_and_wrong_version_are_explained() {
    let mut v = good_entries();
    v.retain(|e| e.0 != "usr/local/bin/ctr");
    v.push(file("usr/local/bin/ctr", elf(183)));
    assert!(format!("{:#}", refused(v)).contains("not amd64"));
    let mut v = good_entries();
    v.retain(|e| e.0 != "usr/local/sbin/runc");
    let e = format!("{:#}", refused(v));
    assert!(e.contains("lacks usr/local/sbin/runc"), "{e}");
    let mut v = good_entries();
    v.retain(|e| e.0 != "opt/containerd/cluster/version");
    v.push(file("opt/containerd/cluster/version", b"CONTAINERD_VERSION: '1.6.20'\n".to_vec()));
    assert!(format!("{:#}", refused(v)).contains("says it is containerd 1.6.20"));
}

#[test]
fn nothing_is_staged_outside_the_staging_dir() {
    let (r, dir) = run(&gz(&tar(&with(file("usr/../../escaped", b"x".to_vec())))), Limits::default());
    assert!(r.is_err());
    assert!(!dir.path().join("escaped").exists());
    assert!(!Path::new("/escaped").exists());
}
