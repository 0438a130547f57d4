//! Reading the checksum files projects publish beside their releases.

use anyhow::{Result, bail};

use crate::digest::Sha256Hex;
use crate::profile::{SourceKind, UpstreamSource};

/// Where a project publishes the digest of one of its downloads, and the name to look up in
/// that file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedChecksum {
    /// The checksum file's upstream URL (a mirror, if any, is applied when it is fetched).
    pub url: String,
    /// The name [`parse_checksum_file`] looks for; a bare-digest file names none.
    pub name: String,
}

/// The checksum file each project publishes beside a download (runtime-facts §1.2, §1.5):
///
/// | kind | checksum file | format |
/// |---|---|---|
/// | bundle, containerd | `<file>.sha256sum` | `<hex>  <file>` |
/// | runc | `runc.sha256sum` in the release directory, one line per arch | `<hex>  runc.<arch>` |
/// | cni-plugins | `<file>.sha256` | `<hex>  <file>` |
/// | crictl | `<file>.sha256` | the bare digest |
/// | kubelet, kubeadm, kubectl | `<binary>.sha256` | the bare digest |
pub fn published_checksum(src: &UpstreamSource) -> PublishedChecksum {
    let name = src.file_name().to_owned();
    // The suffix goes on the path; a query string (a signed link) stays after it.
    let (path, query) = src.url.find(['?', '#']).map_or((src.url.as_str(), ""), |i| src.url.split_at(i));
    let url = match src.kind {
        SourceKind::Bundle | SourceKind::Containerd => format!("{path}.sha256sum{query}"),
        SourceKind::Runc => {
            let dir = path.rsplit_once('/').map_or(path, |(dir, _)| dir);
            format!("{dir}/runc.sha256sum{query}")
        }
        SourceKind::CniPlugins
        | SourceKind::Crictl
        | SourceKind::Kubelet
        | SourceKind::Kubeadm
        | SourceKind::Kubectl => format!("{path}.sha256{query}"),
    };
    PublishedChecksum { url, name }
}

/// The SHA-256 that `text` gives for `file_name`.
///
/// Accepted, as upstream projects publish them:
/// - `sha256sum` output, `<hex>  <name>` or `<hex> *<name>` (binary mode), one line per file;
///   a `./name` path counts as `name`. Lines for other files are skipped.
/// - BSD style (`sha256sum --tag`): `SHA256 (<name>) = <hex>`.
/// - A bare digest alone in the file, as crictl's and Kubernetes' `.sha256` files have.
///
/// Blank lines and `#` comments are ignored. A name listed twice with different digests is
/// an error rather than a guess.
pub fn parse_checksum_file(text: &str, file_name: &str) -> Result<Sha256Hex> {
    let mut found: Option<Sha256Hex> = None;
    let mut bare: Vec<Sha256Hex> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut lines = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        lines += 1;
        let (digest, name) =
            parse_line(line).map_err(|why| anyhow::anyhow!("checksum file line {}: {why}: `{line}`", i + 1))?;
        let Some(name) = name else {
            bare.push(digest);
            continue;
        };
        let name = name.strip_prefix("./").unwrap_or(name);
        if name != file_name {
            names.push(name.to_owned());
            continue;
        }
        match found {
            Some(previous) if previous != digest => {
                bail!("the checksum file lists `{file_name}` twice with different digests")
            }
            _ => found = Some(digest),
        }
    }
    if let Some(digest) = found {
        return Ok(digest);
    }
    // A lone digest names no file; it only makes sense as the whole file.
    if let ([digest], 1) = (bare.as_slice(), lines) {
        return Ok(*digest);
    }
    if lines == 0 {
        bail!("the checksum file for `{file_name}` is empty");
    }
    if names.is_empty() {
        bail!("the checksum file has no line for `{file_name}`");
    }
    bail!("the checksum file has no line for `{file_name}`; it lists: {}", names.join(", "))
}

/// One non-empty line: its digest, and the file name it is for (none for a bare digest).
fn parse_line(line: &str) -> Result<(Sha256Hex, Option<&str>), String> {
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, digest) = rest.rsplit_once(") = ").ok_or("malformed BSD-style line")?;
        return Ok((digest.trim().parse()?, Some(name)));
    }
    let (digest, rest) = match line.split_once(char::is_whitespace) {
        Some((d, rest)) => (d, Some(rest)),
        None => (line, None),
    };
    let digest: Sha256Hex = digest.parse()?;
    // sha256sum separates with a space and then a mode mark: ' ' for text, '*' for binary.
    let name = rest.map(|r| r.trim_start().strip_prefix('*').unwrap_or(r.trim_start()));
    match name {
        Some("") => Err("no file name after the digest".into()),
        name => Ok((digest, name)),
    }
}

#[cfg(test)]
// A failed unwrap in a test is a test failure with a location: what we want.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const A: &str = "9fab9926e20ece5a0989c55a79b6e94c6d0927e06c287c2e0d80490b89da8237";
    const B: &str = "1d86b534c7bba51b78a7eeb1b67dd2ac6c0edeb01c034cc5f590d5ccd824b416";
    const NAME: &str = "cri-containerd-cni-1.7.27-linux-amd64.tar.gz";

    fn parse(text: &str, name: &str) -> Result<String> {
        parse_checksum_file(text, name).map(|d| d.to_string())
    }

    fn source(kind: SourceKind, url: &str) -> UpstreamSource {
        UpstreamSource { kind, version: "1.2.3".parse().unwrap(), url: url.into(), sha256: Sha256Hex([0; 32]) }
    }

    #[test]
    fn each_project_publishes_its_own_way() {
        let c =
            published_checksum(&source(SourceKind::Containerd, "https://h/v2.0.4/containerd-2.0.4-linux-amd64.tar.gz"));
        assert_eq!(c.url, "https://h/v2.0.4/containerd-2.0.4-linux-amd64.tar.gz.sha256sum");
        assert_eq!(c.name, "containerd-2.0.4-linux-amd64.tar.gz");
        let r = published_checksum(&source(SourceKind::Runc, "https://h/runc/releases/download/v1.2.5/runc.arm64"));
        assert_eq!(r.url, "https://h/runc/releases/download/v1.2.5/runc.sha256sum");
        assert_eq!(r.name, "runc.arm64");
        let k = published_checksum(&source(
            SourceKind::Kubelet,
            "https://dl.k8s.io/release/v1.32.0/bin/linux/amd64/kubelet",
        ));
        assert_eq!(k.url, "https://dl.k8s.io/release/v1.32.0/bin/linux/amd64/kubelet.sha256");
        let n = published_checksum(&source(SourceKind::CniPlugins, "https://h/cni-plugins-linux-amd64-v1.6.2.tgz"));
        assert_eq!(n.url, "https://h/cni-plugins-linux-amd64-v1.6.2.tgz.sha256");
    }

    #[test]
    fn sha256sum_text_mode() {
        assert_eq!(parse(&format!("{A}  {NAME}\n"), NAME).unwrap(), A);
    }

    #[test]
    fn sha256sum_binary_marker() {
        assert_eq!(parse(&format!("{A} *{NAME}\n"), NAME).unwrap(), A);
    }

    #[test]
    fn dot_slash_path() {
        assert_eq!(parse(&format!("{A}  ./{NAME}\n"), NAME).unwrap(), A);
    }

    #[test]
    fn picks_the_right_line_among_several() {
        let text = format!("{B}  other-file.tar.gz\n{A}  {NAME}\n{B} *third\n");
        assert_eq!(parse(&text, NAME).unwrap(), A);
        assert_eq!(parse(&text, "other-file.tar.gz").unwrap(), B);
    }

    #[test]
    fn bare_digest_like_crictl() {
        assert_eq!(parse(&format!("{A}\n"), "crictl-v1.30.0-linux-amd64.tar.gz").unwrap(), A);
        assert_eq!(parse(A, "anything").unwrap(), A);
    }

    #[test]
    fn bsd_tag_style() {
        assert_eq!(parse(&format!("SHA256 ({NAME}) = {A}\n"), NAME).unwrap(), A);
    }

    #[test]
    fn tolerates_crlf_uppercase_comments_and_blank_lines() {
        let text = format!("# published by CI\r\n\r\n{}  {NAME}\r\n", A.to_uppercase());
        assert_eq!(parse(&text, NAME).unwrap(), A);
    }

    #[test]
    fn missing_name_lists_what_is_there() {
        let err = parse(&format!("{B}  other.tar.gz\n"), NAME).unwrap_err().to_string();
        assert!(err.contains(NAME) && err.contains("other.tar.gz"), "{err}");
    }

    #[test]
    fn does_not_match_a_name_in_another_directory() {
        assert!(parse(&format!("{A}  arm64/{NAME}\n"), NAME).is_err());
    }

    #[test]
    fn refuses_conflicting_duplicates_and_garbage() {
        assert!(parse(&format!("{A}  {NAME}\n{B}  {NAME}\n"), NAME).is_err());
        assert_eq!(parse(&format!("{A}  {NAME}\n{A}  {NAME}\n"), NAME).unwrap(), A);
        let err = parse("<html>Not Found</html>", NAME).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(parse("", NAME).unwrap_err().to_string().contains("empty"));
        assert!(parse(&format!("{A}\n{B}\n"), NAME).is_err(), "two bare digests are ambiguous");
        assert!(parse(&format!("{A}  \n"), NAME).is_ok(), "trailing spaces trim to a bare digest");
    }
}
