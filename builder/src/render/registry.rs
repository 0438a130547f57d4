//! `/etc/containerd/certs.d/<host>/hosts.toml` for each `[[registry.mirror]]` (containerd ≥
//! 1.5 `config_path`, runtime-facts §3.3). The deprecated `registry.mirrors` table is never
//! written: containerd refuses it next to `config_path`.
//!
//! Mirrors are written in profile order, which is the order containerd tries them.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use url::Url;

use super::{CERTS_D, Rendered, file, header, toml_str};
use crate::compat;
use crate::profile::{Profile, RegistryMirror};

const CAPABILITIES: [&str; 3] = ["pull", "resolve", "push"];

pub fn render(p: &Profile) -> Result<Vec<Rendered>> {
    if p.registry.mirrors.is_empty() {
        return Ok(vec![]);
    }
    // containerd_config refuses this combination with the full explanation; stay silent
    // rather than write files nothing reads if it is ever called on its own.
    if !compat::registry_config_path(&p.containerd.version) {
        return Ok(vec![]);
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for m in &p.registry.mirrors {
        let what = format!("profile `{}`: [[registry.mirror]] host `{}`", p.name, m.host);
        check_host(&m.host).with_context(|| what.clone())?;
        if !seen.insert(m.host.as_str()) {
            bail!("{what} appears twice; merge its endpoints into one entry");
        }
        let text = hosts_toml(p, m).with_context(|| what.clone())?;
        let path = format!("{}/{}/hosts.toml", CERTS_D.trim_start_matches('/'), m.host);
        out.push(file(&path, 0o644, text, "registry"));
    }
    Ok(out)
}

fn hosts_toml(p: &Profile, m: &RegistryMirror) -> Result<String> {
    if m.endpoints.is_empty() {
        bail!("lists no endpoints; add at least one mirror URL");
    }
    if m.capabilities.is_empty() {
        bail!("has an empty `capabilities` list; the mirror would never be used");
    }
    for c in &m.capabilities {
        if !CAPABILITIES.contains(&c.as_str()) {
            bail!("capability `{c}` is not one of {}", CAPABILITIES.join(", "));
        }
    }
    let mut t = header("#", p);
    let server = match (&m.server, m.host.as_str()) {
        (Some(s), _) => Some(endpoint(s).with_context(|| format!("server `{s}`"))?),
        // `_default` applies to every registry, so there is no single upstream to name;
        // containerd then falls back to each registry's own host.
        (None, "_default") => None,
        // Docker Hub's API is not served at docker.io itself.
        (None, "docker.io") => Some("https://registry-1.docker.io".to_owned()),
        (None, host) => Some(format!("https://{host}")),
    };
    if let Some(s) = server {
        t.push_str("\n# Tried after every mirror below has failed.\n");
        t.push_str(&format!("server = {}\n", toml_str(&s)));
    }
    let caps: Vec<String> = m.capabilities.iter().map(|c| toml_str(c)).collect();
    for e in &m.endpoints {
        let url = endpoint(e).with_context(|| format!("endpoint `{e}`"))?;
        t.push_str(&format!("\n[host.{}]\n  capabilities = [{}]\n", toml_str(&url), caps.join(", ")));
        if m.skip_verify {
            t.push_str("  skip_verify = true\n");
        }
    }
    Ok(t)
}

/// A registry host as containerd names the directory: `host`, `host:port`, `[v6]:port`, or
/// `_default`. Anything that could leave `certs.d/` or name a different directory is refused.
fn check_host(host: &str) -> Result<()> {
    if host == "_default" {
        return Ok(());
    }
    if host.is_empty() || host.contains('/') || host.contains("..") || host.starts_with(['.', '-']) {
        bail!("is not a registry host: use a name such as `docker.io` or `registry.local:5000`, without `/` or `..`");
    }
    let url = Url::parse(&format!("https://{host}/")).map_err(|e| anyhow::anyhow!("is not a registry host ({e})"))?;
    let name = url.host_str().unwrap_or_default();
    // The parser drops a default port (`:443`); put back the one the profile wrote.
    let has_port = host.rsplit_once(']').map_or(host, |(_, rest)| rest).contains(':');
    let authority = match url.port_or_known_default() {
        Some(port) if has_port => format!("{name}:{port}"),
        _ => name.to_owned(),
    };
    // The URL parser lowercases and normalises; a host it rewrote would not match the
    // directory containerd looks up.
    if authority != host {
        bail!("is not written the way containerd looks it up; write it as `{authority}`");
    }
    Ok(())
}

/// An http(s) endpoint URL without credentials, query or fragment, rendered without a
/// trailing `/`: containerd appends `/v2` to any non-empty path, and `/` would become `//v2`.
fn endpoint(s: &str) -> Result<String> {
    let url = Url::parse(s).map_err(|e| anyhow::anyhow!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("must be an http:// or https:// URL");
    }
    let Some(host) = url.host_str() else { bail!("names no host") };
    if !url.username().is_empty() || url.password().is_some() {
        bail!("must not carry credentials; hosts.toml is world-readable");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("must not have a query or fragment");
    }
    let mut out = format!("{}://{host}", url.scheme());
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path().trim_end_matches('/'));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::super::test_support::{profile, text};
    use super::*;

    fn mirror(body: &str) -> Result<Vec<Rendered>> {
        render(&profile("1.30.2", "1.6.20", &format!("[[registry.mirror]]\n{body}\n")))
    }

    #[test]
    fn hosts_toml_has_server_and_hosts_in_order() {
        let out = mirror(
            "host = \"docker.io\"\nendpoints = [\"https://a.example/\", \"http://b.example:5000\"]\nskip_verify = true",
        )
        .unwrap();
        let t = text(&out, "etc/containerd/certs.d/docker.io/hosts.toml");
        let v: toml::Table = toml::from_str(t).unwrap();
        assert_eq!(v["server"].as_str(), Some("https://registry-1.docker.io"));
        assert_eq!(v["host"]["https://a.example"]["capabilities"].as_array().unwrap().len(), 2);
        assert_eq!(v["host"]["http://b.example:5000"]["skip_verify"].as_bool(), Some(true));
        assert!(t.find("a.example").unwrap() < t.find("b.example").unwrap());
        let out = mirror("host = \"registry.k8s.io\"\nendpoints = [\"https://m.example/v2\"]").unwrap();
        assert!(
            text(&out, "etc/containerd/certs.d/registry.k8s.io/hosts.toml")
                .contains("server = \"https://registry.k8s.io\"\n")
        );
        let out = mirror("host = \"_default\"\nendpoints = [\"https://m.example\"]").unwrap();
        assert!(!text(&out, "etc/containerd/certs.d/_default/hosts.toml").contains("server"));
    }

    #[test]
    fn bad_hosts_and_urls_are_refused() {
        for host in ["../etc", "a/b", "", "Docker.IO", ".hidden", "host:443x"] {
            let err = mirror(&format!("host = \"{host}\"\nendpoints = [\"https://m.example\"]")).unwrap_err();
            assert!(format!("{err:#}").contains("host"), "{host}: {err:#}");
        }
        for url in ["ftp://m.example", "m.example", "https://u:p@m.example", "https://m.example/?x=1"] {
            let err = mirror(&format!("host = \"docker.io\"\nendpoints = [\"{url}\"]")).unwrap_err();
            assert!(format!("{err:#}").contains(url), "{url}: {err:#}");
        }
        assert!(mirror("host = \"docker.io\"\nendpoints = []").is_err());
        assert!(mirror("host = \"docker.io\"\nendpoints = [\"https://m\"]\ncapabilities = [\"pul\"]").is_err());
        let twice = "host = \"docker.io\"\nendpoints = [\"https://m\"]\n[[registry.mirror]]\nhost = \"docker.io\"\nendpoints = [\"https://n\"]";
        assert!(format!("{:#}", mirror(twice).unwrap_err()).contains("twice"));
    }
}
