//! Rules on single fields that their types do not carry: every string a profile holds that
//! reaches a generated file, a message or a record is an identifier, one line of bounded
//! length, or a URL. A refused field is named with what is allowed, before anything runs.

use url::Url;

use super::{Profile, SourceKind, redact_url_text};
use crate::ident::{self, MAX_DESCRIPTION_CHARS};
use crate::overlay::OverlayPath;

/// The longest URL template or image source path accepted.
const MAX_URL_CHARS: usize = 4096;

/// Check every field rule; the first broken one is the error, naming the field.
pub(super) fn validate(p: &Profile) -> Result<(), String> {
    let field =
        |name: &str, value: &str, why: String| format!("{name} = \"{}\" is refused: {why}", ident::shown(value));
    ident::parse_node_name(&p.name)
        .map_err(|why| field("name", &p.name, format!("{why}; the name is also the node's default hostname")))?;
    ident::parse_one_line(&p.description, MAX_DESCRIPTION_CHARS)
        .map_err(|why| field("description", &p.description, why))?;
    if let Some(h) = &p.seed.hostname {
        ident::parse_node_name(h).map_err(|why| field("seed.hostname", h, why))?;
    }
    if let Some(id) = &p.seed.instance_id {
        ident::parse_instance_id(id).map_err(|why| field("seed.instance_id", id, why))?;
    }
    for (i, key) in p.seed.ssh_authorized_keys.iter().enumerate() {
        ident::parse_ssh_key(key).map_err(|why| field(&format!("seed.ssh_authorized_keys[{i}]"), key, why))?;
    }
    for (name, template) in url_templates(p) {
        check_url_template(template).map_err(|why| field(name, &redact_url_text(template), why))?;
    }
    for (i, img) in p.images.iter().enumerate() {
        let name = format!("image[{i}].source");
        if is_url(&img.source) {
            check_url_template(&img.source).map_err(|why| field(&name, &redact_url_text(&img.source), why))?;
        } else {
            ident::parse_one_line(&img.source, MAX_URL_CHARS).map_err(|why| field(&name, &img.source, why))?;
            if img.source.is_empty() {
                return Err(field(&name, &img.source, "give a path relative to the profile, or an http(s) URL".into()));
            }
        }
    }
    for (i, o) in p.overlays.iter().enumerate() {
        let entry = format!("[[overlay]] #{}", i + 1);
        let name = format!("{entry} path");
        ident::parse_one_line(&o.path, MAX_URL_CHARS).map_err(|why| field(&name, &o.path, why))?;
        if o.path.is_empty() {
            return Err(field(&name, &o.path, "give a directory or a .tar/.tar.gz, relative to the profile".into()));
        }
        if is_url(&o.path) {
            let why = "site overlays are read from local paths; fetch the archive first".into();
            return Err(field(&name, &redact_url_text(&o.path), why));
        }
        for (key, list) in [("overrides", &o.overrides), ("setuid", &o.setuid)] {
            let mut seen = std::collections::BTreeSet::new();
            for (j, path) in list.iter().enumerate() {
                let name = format!("{entry} {key}[{j}]");
                ident::parse_one_line(path, MAX_URL_CHARS).map_err(|why| field(&name, path, why))?;
                let normal = OverlayPath::new(path).map_err(|e| field(&name, path, format!("{e:#}")))?;
                if !seen.insert(normal) {
                    return Err(field(&name, path, format!("the path is listed twice in this entry's {key}")));
                }
            }
        }
    }
    if let Some(t) = &p.node.runtime_request_timeout
        && t.nanos() <= 0
    {
        return Err(field(
            "node.runtime_request_timeout",
            t.as_str(),
            "it must be positive: the kubelet gives each CRI call this long, and zero or less would make every \
             call fail at once; leave the key out for the kubelet's default (2m)"
                .into(),
        ));
    }
    Ok(())
}

/// Whether an image source is a URL rather than a path.
pub(super) fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// Every URL template the profile gives, with the key that holds it.
fn url_templates(p: &Profile) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    if let Some(b) = &p.containerd.bundle {
        out.push(("containerd.bundle.url", b.url.as_str()));
    }
    if let Some(r) = &p.containerd.release {
        out.push(("containerd.release.url", r.url.as_str()));
    }
    for (name, c) in [("runc.url", &p.runc), ("cni_plugins.url", &p.cni_plugins), ("crictl.url", &p.crictl)] {
        if let Some(url) = c.as_ref().and_then(|c| c.url.as_deref()) {
            out.push((name, url));
        }
    }
    if let Some(b) = &p.kubernetes.binaries {
        out.push(("kubernetes.binaries.url", b.url.as_str()));
    }
    out
}

/// An http(s) URL (template) on one line: no whitespace or control characters, bounded, and
/// a valid URL with a host once `{version}`, `{arch}` and `{name}` are filled in.
fn check_url_template(t: &str) -> Result<(), String> {
    if t.chars().count() > MAX_URL_CHARS {
        return Err(format!("a URL of at most {MAX_URL_CHARS} characters is expected"));
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a URL cannot hold spaces, line breaks or control characters (percent-encode them)".into());
    }
    let expanded =
        t.replace("{version}", "1.0.0").replace("{arch}", "amd64").replace("{name}", SourceKind::Kubelet.as_str());
    match Url::parse(&expanded) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        Ok(_) => Err("only http:// and https:// URLs with a host are fetched".into()),
        Err(e) => Err(format!("not a valid URL ({e})")),
    }
}
