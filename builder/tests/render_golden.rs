//! Golden files: every profile in `profiles/` and `builder/tests/profiles/` is rendered and
//! compared byte for byte with `builder/tests/golden/<profile name>/`.
//!
//! The directories are listed, not named here, so a new profile is covered as soon as it
//! exists (its first run fails until it is blessed). `_index.txt` in each golden directory
//! lists every entry with its mode, or a symlink with its target.
//!
//! To accept a change after reviewing it: `NODEFORGE_BLESS=1 cargo test --test render_golden`.
#![allow(clippy::unwrap_used)] // a panic is the failure report in a test

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use nodeforge::profile::LoadedProfile;
use nodeforge::render::{self, Rendered};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.toml` in the two profile directories, sorted.
pub fn all_profiles() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in [manifest_dir().join("../profiles"), manifest_dir().join("tests/profiles")] {
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The expected tree of one profile: (relative path, bytes), including `_index.txt`.
fn expected_tree(rendered: &[Rendered]) -> Vec<(String, Vec<u8>)> {
    let mut index = String::new();
    let mut files = Vec::new();
    for r in rendered {
        match r {
            Rendered::File(f) => {
                writeln!(index, "{:04o} {}", f.mode, f.path).unwrap();
                files.push((f.path.clone(), f.bytes.clone()));
            }
            Rendered::Link(l) => writeln!(index, "link {} -> {}", l.path, l.target).unwrap(),
        }
    }
    files.push(("_index.txt".to_owned(), index.into_bytes()));
    files
}

fn files_under(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn rendered_files_match_goldens() {
    let bless = std::env::var_os("NODEFORGE_BLESS").is_some_and(|v| v == "1");
    let golden_root = manifest_dir().join("tests/golden");
    let mut failures = Vec::new();
    let mut names = Vec::new();
    for path in all_profiles() {
        let loaded = LoadedProfile::load(&path).unwrap();
        let rendered = render::render(&loaded).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let name = loaded.profile.name.clone();
        assert!(!names.contains(&name), "two profiles are named `{name}`");
        names.push(name.clone());
        let dir = golden_root.join(&name);
        let tree = expected_tree(&rendered);
        if bless {
            let _ = fs::remove_dir_all(&dir);
            for (rel, bytes) in &tree {
                let dest = dir.join(rel);
                fs::create_dir_all(dest.parent().unwrap()).unwrap();
                fs::write(&dest, bytes).unwrap();
            }
            continue;
        }
        for (rel, bytes) in &tree {
            match fs::read(dir.join(rel)) {
                Ok(golden) if golden == *bytes => {}
                Ok(golden) => failures.push(format!(
                    "{name}/{rel} differs:\n--- golden\n{}\n--- rendered\n{}",
                    String::from_utf8_lossy(&golden),
                    String::from_utf8_lossy(bytes)
                )),
                Err(_) => failures.push(format!("{name}/{rel}: no golden file")),
            }
        }
        let wanted: Vec<&str> = tree.iter().map(|(r, _)| r.as_str()).collect();
        for stale in files_under(&dir) {
            if !wanted.contains(&stale.as_str()) {
                failures.push(format!("{name}/{stale}: golden file no longer rendered"));
            }
        }
    }
    // Golden directories of profiles that are gone.
    if let Ok(entries) = fs::read_dir(&golden_root) {
        for e in entries {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if !names.contains(&n) {
                if bless {
                    fs::remove_dir_all(golden_root.join(&n)).unwrap();
                } else {
                    failures.push(format!("{n}: golden directory without a profile"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nReview the change, then bless it: NODEFORGE_BLESS=1 cargo test -p nodeforge --test render_golden",
        failures.join("\n\n")
    );
}

#[test]
fn rendering_is_deterministic() {
    for path in all_profiles() {
        let loaded = LoadedProfile::load(&path).unwrap();
        assert_eq!(render::render(&loaded).unwrap(), render::render(&loaded).unwrap());
    }
}

/// What ships in `profiles/` must pass `nodeforge check` (warnings allowed, e.g. the bundle's
/// deprecation): a shipped profile that `build` would refuse is a bug.
#[test]
fn shipped_profiles_pass_check() {
    let shipped = manifest_dir().join("../profiles");
    for path in all_profiles().into_iter().filter(|p| p.starts_with(&shipped)) {
        let loaded = LoadedProfile::load(&path).unwrap();
        let findings = nodeforge::check::check(&loaded);
        assert!(!nodeforge::check::has_errors(&findings), "{}: {findings:#?}", path.display());
    }
}
