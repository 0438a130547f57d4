//! The values of `nodeforge seed`'s flags and their parsers: plain values with no I/O, so
//! the command line can name them without reaching into the seed writers.

use serde::Serialize;

use crate::ident::is_dns_name;

pub const SEED_IMAGE_NAME: &str = "seed.img";
pub const SEED_ISO_NAME: &str = "seed.iso";

/// The seed volume's filesystem; NoCloud reads both (runtime-facts §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedFormat {
    /// FAT with long names (`seed.img`), written in-process.
    #[default]
    Vfat,
    /// ISO 9660 with Joliet and Rock Ridge (`seed.iso`), written by xorriso.
    Iso,
}

impl SeedFormat {
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Vfat => SEED_IMAGE_NAME,
            Self::Iso => SEED_ISO_NAME,
        }
    }
}

/// `--join-discovery-timeout`: how long `kubeadm join` keeps asking the API server for a
/// `cluster-info` it can trust before it gives up (kubeadm's default is 5m). Whole seconds,
/// minutes or hours in Go's duration syntax (`45s`, `2m`, `1m30s`), from 1 s to 1 h.
pub fn parse_discovery_timeout(s: &str) -> Result<String, String> {
    let err = || Err(format!("`{s}` is not a duration from 1s to 1h such as 45s, 2m or 1m30s"));
    let mut seconds = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        return err();
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 || digits > 5 {
            return err();
        }
        let Ok(n) = rest[..digits].parse::<u64>() else { return err() };
        let (unit, tail) =
            rest[digits..].split_at(rest[digits..].find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len() - digits));
        seconds += n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return err(),
        };
        rest = tail;
    }
    if !(1..=3600).contains(&seconds) {
        return err();
    }
    Ok(s.to_owned())
}

/// `sha256:` and 64 hex digits: the pin `kubeadm token create --print-join-command` prints.
pub fn parse_ca_cert_hash(s: &str) -> Result<String, String> {
    match s.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
        }
        _ => Err("expected sha256: followed by 64 hex digits (the public-key pin `kubeadm token create \
                  --print-join-command` prints)"
            .into()),
    }
}

/// `HOST:PORT`, HOST a DNS name or IPv4 address, or `[IPv6]:PORT`.
pub fn parse_endpoint(s: &str) -> Result<String, String> {
    let err = |why: &str| Err(format!("expected HOST:PORT such as 10.0.0.10:6443 or [fd00::1]:6443 ({why})"));
    let Some((host, port)) = s.rsplit_once(':') else { return err("no port") };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return err("the port must be a number from 1 to 65535"),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return err("not an IPv6 address inside the brackets");
        }
    } else if host.contains(':') {
        return err("an IPv6 address needs brackets");
    } else if host.parse::<std::net::Ipv4Addr>().is_err() && !is_dns_name(host) {
        return err("the host is neither an IPv4 address nor a DNS name");
    }
    Ok(s.to_owned())
}

/// A label or taint key: `[prefix/]name`, prefix a DNS subdomain, name ≤ 63 characters.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_name(p)
    {
        return Err(format!("the key prefix `{p}` is not a lowercase DNS subdomain"));
    }
    if !is_label_value(name) || name.is_empty() {
        return Err(format!(
            "the key name `{name}` must be 1–63 characters of letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Empty, or ≤ 63 characters of `[A-Za-z0-9._-]` that start and end alphanumerically.
fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// Labels under kubernetes.io or k8s.io that the kubelet may set on its own Node (it refuses
/// to start with any other, and the NodeRestriction admission plugin rejects them).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// `--label KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<Label, String> {
    let Some((key, value)) = s.split_once('=') else { return Err("expected KEY=VALUE".into()) };
    check_key(key)?;
    if !is_label_value(value) {
        return Err(format!(
            "the value `{value}` must be at most 63 characters of letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit"
        ));
    }
    if let Some((prefix, _)) = key.split_once('/') {
        let restricted = ["kubernetes.io", "k8s.io"].iter().any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")));
        let allowed = KUBELET_LABELS.contains(&key)
            || ["kubelet.kubernetes.io", "node.kubernetes.io"]
                .iter()
                .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")));
        if restricted && !allowed {
            return Err(format!(
                "the kubelet may not set `{key}` on its own Node (kubernetes.io and k8s.io labels are \
                 restricted to a fixed set and the kubelet.kubernetes.io and node.kubernetes.io prefixes); \
                 apply it with `kubectl label node` after the join"
            ));
        }
    }
    Ok(Label { key: key.to_owned(), value: value.to_owned() })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taint {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: Effect,
}

/// `--taint KEY[=VALUE]:EFFECT`, as `kubectl taint` spells it.
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let Some((kv, effect)) = s.rsplit_once(':') else {
        return Err("expected KEY[=VALUE]:EFFECT, e.g. dedicated=gpu:NoSchedule".into());
    };
    let effect = match effect {
        "NoSchedule" => Effect::NoSchedule,
        "PreferNoSchedule" => Effect::PreferNoSchedule,
        "NoExecute" => Effect::NoExecute,
        other => return Err(format!("effect `{other}` is not one of NoSchedule, PreferNoSchedule, NoExecute")),
    };
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    check_key(key)?;
    if let Some(v) = value
        && (!is_label_value(v) || v.is_empty())
    {
        return Err(format!(
            "the value `{v}` must be 1–63 characters of letters, digits, '-', '_' and '.', starting and \
             ending with a letter or digit (or leave out `=VALUE`)"
        ));
    }
    Ok(Taint { key: key.to_owned(), value: value.map(str::to_owned), effect })
}
