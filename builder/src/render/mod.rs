//! Renderers: every configuration file of the node overlay, generated from the profile.
//!
//! One module per generated file (or small family of files). Each renderer is a pure
//! function of the [`Profile`]: no I/O, no clock, no environment, so the same profile always
//! gives the same bytes and the golden tests in `tests/render_golden.rs` can pin them.
//! Version-dependent choices come from [`crate::compat`] or are documented where they are made.
//! A body no profile or version changes is not a string literal here: it lives as a file under
//! `overlays/` at the node path it is installed to, is embedded with `include_str!`, and its
//! renderer adds only the header that names the profile (`system`, `kubelet_service`).

mod cni;
pub mod containerd_config;
mod containerd_service;
mod crictl;
pub mod kubelet;
pub mod kubelet_service;
pub mod preload;
mod registry;
mod system;

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

use crate::compat;
use crate::imageref::ImageRef;
use crate::overlay::{Content, Origin, Overlay};
use crate::profile::{LoadedProfile, Profile};

/// The CRI socket of containerd 1.x; the same path in every file that names it.
pub const CONTAINERD_SOCKET: &str = "unix:///run/containerd/containerd.sock";
/// Where containerd looks for `<host>/hosts.toml` (`config_path`, containerd ≥ 1.5).
pub const CERTS_D: &str = "/etc/containerd/certs.d";
/// Where the build pipeline puts preloaded image archives on the node.
pub const IMAGE_DIR: &str = "var/lib/nodeforge/images";

/// A generated regular file. `path` is relative to the node's `/` (`etc/crictl.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
    /// The renderer's name, recorded as the entry's origin in the manifest.
    pub renderer: &'static str,
}

/// A generated symlink, used for systemd enablement (`multi-user.target.wants/x.service`),
/// which is what `systemctl enable` would create; the image has no chance to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedLink {
    pub path: String,
    /// Absolute target on the node, as `systemctl enable` writes it.
    pub target: String,
    pub renderer: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    File(RenderedFile),
    Link(RenderedLink),
}

impl Rendered {
    pub fn path(&self) -> &str {
        match self {
            Rendered::File(f) => &f.path,
            Rendered::Link(l) => &l.path,
        }
    }

    pub fn renderer(&self) -> &'static str {
        match self {
            Rendered::File(f) => f.renderer,
            Rendered::Link(l) => l.renderer,
        }
    }
}

/// Render every generated file of the node, sorted by path.
pub fn render(profile: &LoadedProfile) -> Result<Vec<Rendered>> {
    render_profile(&profile.profile)
}

/// [`render`] on a bare profile; what the unit tests use.
pub fn render_profile(p: &Profile) -> Result<Vec<Rendered>> {
    check_supported(p)?;
    let mut out = Vec::new();
    out.extend(containerd_config::render(p)?);
    out.extend(containerd_service::render(p));
    out.extend(crictl::render(p));
    out.extend(cni::render(p)?);
    out.extend(kubelet::render(p));
    out.extend(kubelet_service::render(p));
    out.extend(system::render(p));
    out.extend(registry::render(p)?);
    out.extend(preload::render(p)?);
    out.sort_by(|a, b| a.path().cmp(b.path()));
    // Two renderers claiming one path is a bug here, not something the overlay should be
    // left to report with less context.
    for pair in out.windows(2) {
        if pair[0].path() == pair[1].path() {
            bail!("renderers `{}` and `{}` both generate /{}", pair[0].renderer(), pair[1].renderer(), pair[0].path());
        }
    }
    Ok(out)
}

/// Add rendered files and links to the overlay, each with `Origin::Rendered`.
pub fn add_to_overlay(rendered: &[Rendered], overlay: &mut Overlay) -> Result<()> {
    for r in rendered {
        let origin = Origin::Rendered { renderer: r.renderer().to_owned() };
        match r {
            Rendered::File(f) => overlay.add_file(&f.path, f.mode, Content::Inline(f.bytes.clone()), origin)?,
            Rendered::Link(l) => overlay.add_symlink(&l.path, &l.target, origin)?,
        }
    }
    Ok(())
}

/// The overlay path of a preloaded image's archive: `var/lib/nodeforge/images/<name>.tar`.
///
/// The readable part keeps `[A-Za-z0-9._-]` of the reference and maps the rest to `_`; that
/// alone is not injective (`a/b:1` and `a/b_1:…` can meet), so a short digest of the full
/// reference follows it. The result is stable across builds and safe in a systemd unit line
/// (no spaces, `%` or `$`).
pub fn image_archive_path(r: &ImageRef) -> String {
    let full = r.to_string();
    let readable: String = full
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') { c } else { '_' })
        .take(120)
        .collect();
    let digest = hex::encode(Sha256::digest(full.as_bytes()));
    format!("{IMAGE_DIR}/{readable}-{}.tar", &digest[..12])
}

/// The sandbox ("pause") image: the profile's, or the one kubeadm of its Kubernetes expects.
pub fn sandbox_image(p: &Profile) -> ImageRef {
    p.node.sandbox_image.clone().unwrap_or_else(|| compat::default_sandbox_image(&p.kubernetes.version))
}

/// The containerd lines these renderers know: 1.4 and newer (< 1.4 has no bundle in the
/// supported layout and no CRI config this renderer writes, runtime-facts §1.1, §3.1).
fn check_supported(p: &Profile) -> Result<()> {
    let v = &p.containerd.version;
    if !v.at_least(1, 4, 0) {
        bail!("profile `{}`: containerd {v} is older than 1.4, the oldest line nodeforge renders for", p.name);
    }
    Ok(())
}

/// The first lines of every generated file, in the file's comment syntax.
///
/// The profile's name is an RFC 1123 name when the profile was parsed; anything else a
/// caller may have put there is replaced by `?` here, so the comment stays one line.
fn header(comment: &str, p: &Profile) -> String {
    let name: String =
        p.name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') { c } else { '?' }).collect();
    format!(
        "{comment} Generated by nodeforge from profile \"{name}\". Do not edit by hand:\n\
         {comment} change the profile and rebuild the node overlay instead.\n"
    )
}

/// A TOML basic string. Hand-written TOML keeps the key order and comments that make the
/// files readable; values still go through proper escaping.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn file(path: &str, mode: u32, text: String, renderer: &'static str) -> Rendered {
    Rendered::File(RenderedFile { path: path.to_owned(), mode, bytes: text.into_bytes(), renderer })
}

/// `systemctl enable` for a unit with `WantedBy=multi-user.target`.
fn enable_link(unit: &str, renderer: &'static str) -> Rendered {
    Rendered::Link(RenderedLink {
        path: format!("etc/systemd/system/multi-user.target.wants/{unit}"),
        target: format!("/etc/systemd/system/{unit}"),
        renderer,
    })
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::profile::Profile;

    /// A profile with the given versions and extra TOML appended.
    pub fn profile(k8s: &str, containerd: &str, extra: &str) -> Profile {
        let text = format!(
            "name = \"t\"\n[kubernetes]\nversion = \"{k8s}\"\n[containerd]\nversion = \"{containerd}\"\n\
             [containerd.bundle]\nsha256 = \"{}\"\n{extra}",
            "0".repeat(64)
        );
        Profile::parse(&text).expect("test profile parses")
    }

    pub fn text<'a>(out: &'a [super::Rendered], path: &str) -> &'a str {
        out.iter()
            .find_map(|r| match r {
                super::Rendered::File(f) if f.path == path => Some(std::str::from_utf8(&f.bytes).expect("utf-8")),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{path} not rendered"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::test_support::profile;
    use super::*;

    #[test]
    fn output_is_sorted_unique_and_relative() {
        let out = render_profile(&profile("1.30.2", "1.6.20", "")).unwrap();
        let paths: Vec<_> = out.iter().map(Rendered::path).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(paths, sorted);
        assert!(paths.iter().all(|p| !p.starts_with('/')));
        let mut overlay = Overlay::new();
        add_to_overlay(&out, &mut overlay).unwrap();
        assert!(overlay.get("etc/containerd/config.toml").is_some());
    }

    #[test]
    fn unsupported_containerd_lines_are_refused() {
        let err = render_profile(&profile("1.14.10", "1.3.9", "")).unwrap_err().to_string();
        assert!(err.contains("older than 1.4"), "{err}");
        assert!(render_profile(&profile("1.32.0", "2.0.0", "")).is_ok());
    }

    #[test]
    fn archive_paths_are_distinct_and_tame() {
        let a: ImageRef = "x.io/a/b:1".parse().unwrap();
        let b: ImageRef = "x.io/a_b:1".parse().unwrap();
        let (pa, pb) = (image_archive_path(&a), image_archive_path(&b));
        assert_ne!(pa, pb);
        assert!(pa.starts_with("var/lib/nodeforge/images/x.io_a_b_1-") && pa.ends_with(".tar"), "{pa}");
        let d: ImageRef = format!("x.io/a@sha256:{}", "f".repeat(64)).parse().unwrap();
        let pd = image_archive_path(&d);
        assert!(pd.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-/".contains(&c)), "{pd}");
    }

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_str("a\"b\\c"), r#""a\"b\\c""#);
    }
}
