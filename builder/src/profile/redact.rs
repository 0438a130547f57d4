//! Credentials in the URLs a profile gives (`https://user:password@host/…?X-Amz-Signature=…`)
//! are used to fetch and shown nowhere: every URL that is printed, logged or recorded (the
//! report, `--json`, manifest.json, the lock file) goes through [`redact_url_text`], and the
//! name of a download comes from the URL's path alone ([`url_file_name`]).

use super::Profile;

/// What replaces a user name, password or query string.
const REDACTED: &str = "REDACTED";

/// `url` (or a URL template) with any user name and password replaced by `REDACTED`, a query
/// string replaced by `?REDACTED`, and the fragment dropped. Works on the text as written,
/// without parsing (a template's `{version}` stays as it is), and errs on the side of hiding:
/// everything before the last `@` of the authority counts as credentials.
pub fn redact_url_text(url: &str) -> String {
    let mut query = false;
    let mut out = String::new();
    let mut path = url;
    if let Some((scheme, rest)) = url.split_once("://") {
        // The authority, as far as the first `/`: a `?` or `#` before an `@` does not end
        // it here, so a password holding one is still hidden.
        let end = rest.find('/').unwrap_or(rest.len());
        let (authority, after) = rest.split_at(end);
        out.push_str(scheme);
        out.push_str("://");
        let host = match authority.rsplit_once('@') {
            Some((_, host)) => {
                out.push_str(REDACTED);
                out.push('@');
                host
            }
            None => authority,
        };
        match host.find(['?', '#']) {
            Some(i) => {
                query = host.as_bytes()[i] == b'?';
                out.push_str(&host[..i]);
                path = "";
            }
            None => {
                out.push_str(host);
                path = after;
            }
        }
    }
    match path.find(['?', '#']) {
        Some(i) => {
            query |= path.as_bytes()[i] == b'?';
            out.push_str(&path[..i]);
        }
        None => out.push_str(path),
    }
    if query {
        out.push('?');
        out.push_str(REDACTED);
    }
    out
}

/// The file name a URL names: the last segment of its path, without query or fragment
/// (`https://h/d/x.tar.gz?sig=…` → `x.tar.gz`).
pub fn url_file_name(url: &str) -> &str {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let path = &url[..end];
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => path,
    };
    path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("download")
}

impl Profile {
    /// The profile as it may be recorded (manifest.json): every URL redacted.
    pub fn redacted(&self) -> Profile {
        let mut p = self.clone();
        if let Some(b) = &mut p.containerd.bundle {
            b.url = redact_url_text(&b.url);
        }
        if let Some(r) = &mut p.containerd.release {
            r.url = redact_url_text(&r.url);
        }
        for c in [&mut p.runc, &mut p.cni_plugins, &mut p.crictl].into_iter().flatten() {
            c.url = c.url.as_deref().map(redact_url_text);
        }
        if let Some(b) = &mut p.kubernetes.binaries {
            b.url = redact_url_text(&b.url);
        }
        for img in &mut p.images {
            img.source = img.shown_source();
        }
        for m in &mut p.registry.mirrors {
            m.endpoints = m.endpoints.iter().map(|e| redact_url_text(e)).collect();
            m.server = m.server.as_deref().map(redact_url_text);
        }
        p
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::*;

    #[test]
    fn credentials_queries_and_fragments_go() {
        for (url, want) in [
            ("https://host/p/x.tar.gz", "https://host/p/x.tar.gz"),
            (
                "http://user:PASSWORD@host:8080/a/{version}/x.tgz?sig=SECRET",
                "http://REDACTED@host:8080/a/{version}/x.tgz?REDACTED",
            ),
            ("https://tok@host/x#frag", "https://REDACTED@host/x"),
            ("https://u:p@ss@host/x", "https://REDACTED@host/x"),
            ("https://host?q=SECRET", "https://host?REDACTED"),
            ("https://u:SECRET?@host/x", "https://REDACTED@host/x"),
            ("https://host/a?b=c/d@e", "https://host/a?REDACTED"),
            ("images/x.tar", "images/x.tar"),
        ] {
            let got = redact_url_text(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("SECRET") && !got.contains("PASSWORD"), "{got}");
        }
    }

    #[test]
    fn file_names_come_from_the_path() {
        assert_eq!(url_file_name("https://u:p@h/d/x.tar.gz?sig=S#f"), "x.tar.gz");
        assert_eq!(url_file_name("https://h/d/runc.amd64"), "runc.amd64");
        assert_eq!(url_file_name("https://h?x=/y"), "download");
        assert_eq!(url_file_name("https://h/"), "download");
    }
}
