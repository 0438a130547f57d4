//! Container image references (`registry.k8s.io/pause:3.9`), parsed by the grammar the
//! distribution reference library uses, so a reference containerd would reject is refused
//! when the profile is checked, not when the node boots.

use std::fmt;
use std::str::FromStr;

/// A fully qualified image reference: every field is explicit after parsing, the way
/// containerd's CRI plugin normalises it (`pause:3.9` → `docker.io/library/pause:3.9`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` when the reference is pinned by digest.
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a valid image reference: {why}")]
pub struct ImageRefError {
    input: String,
    why: String,
}

const DOCKER_HUB: &str = "docker.io";

impl ImageRef {
    /// The registry host a pull goes to; the key of containerd's `certs.d/<host>/`.
    pub fn registry(&self) -> &str {
        &self.domain
    }
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        let sep_start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[sep_start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || (!sep.is_empty() && sep.bytes().all(|x| x == b'-'));
        if !ok || sep_start == i {
            return false;
        }
    }
    true
}

fn is_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_tag(t: &str) -> bool {
    // [\w][\w.-]{0,127}
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| ImageRefError { input: input.to_owned(), why: why.to_owned() };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.len() > 255 + 128 + 72 {
            return Err(err("it is too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(|| err("a digest must start with `sha256:`"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(err("a sha256 digest is 64 lowercase hex characters"));
                }
                (rest, Some(d.to_owned()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'; a ':' before that is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !is_tag(t) {
                    return Err(err("the tag may hold only letters, digits, `_`, `.` and `-` (at most 128)"));
                }
                (&rest[..last_slash + i], Some(t.to_owned()))
            }
            None => (rest, None),
        };
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" || first.starts_with('[') =>
            {
                if !is_domain(first) {
                    return Err(err(&format!("`{first}` is not a valid registry host")));
                }
                (first.to_owned(), rest.to_owned())
            }
            Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
            None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        if let Some(bad) = path.split('/').find(|c| !is_path_component(c)) {
            return Err(err(&format!(
                "`{bad}` is not a valid repository component (lowercase letters, digits and single separators)"
            )));
        }
        if tag.is_none() && digest.is_none() {
            return Err(err("it names neither a tag nor a digest; pin one, e.g. `:3.9`"));
        }
        Ok(Self { domain, path, tag, digest })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

crate::serde_via_str!(ImageRef);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_containerd() {
        let r: ImageRef = "pause:3.9".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/pause:3.9");
        let r: ImageRef = "registry.k8s.io/pause:3.10".parse().unwrap();
        assert_eq!(r.registry(), "registry.k8s.io");
        let r: ImageRef = "localhost:5000/team/app:v1".parse().unwrap();
        assert_eq!((r.domain.as_str(), r.path.as_str()), ("localhost:5000", "team/app"));
        let d = format!("ghcr.io/a/b@sha256:{}", "a".repeat(64));
        assert_eq!(d.parse::<ImageRef>().unwrap().to_string(), d);
    }

    #[test]
    fn refuses_what_containerd_refuses() {
        for bad in ["", "Registry.k8s.io/Pause:3.9", "registry.k8s.io/pause", "a//b:1", "x/y:", "x/y:-1", "x@sha256:12"]
        {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad} parsed");
        }
    }
}
