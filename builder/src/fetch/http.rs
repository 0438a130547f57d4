//! The HTTP side: the client, the redirect rule, mirrors, and one streamed download.

use std::fs::File;
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use url::Url;

use super::{FetchError, FetchOptions, copy_interruptibly, io_cause};
use crate::digest::Sha256Hex;
use crate::io::{HashingReader, Interrupted, LimitReader, SizeLimitExceeded};

/// A CA bundle the size of a distribution's whole trust store is about 200 KiB.
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

/// GitHub sends release downloads through one or two redirects; ten is generous.
const MAX_REDIRECTS: usize = 10;

pub(super) fn client(options: &FetchOptions) -> Result<reqwest::blocking::Client> {
    // reqwest is built without a default crypto provider; install ring's for the process.
    // An error only means one is installed already, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut builder = reqwest::blocking::Client::builder()
        .user_agent(concat!("nodeforge/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(options.connect_timeout)
        .timeout(options.stall_timeout)
        .redirect(reqwest::redirect::Policy::custom(redirect_rule));
    if let Some(path) = &options.ca_cert {
        let pem = crate::io::read_small_file(path, MAX_CA_FILE_BYTES)
            .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        if certs.is_empty() {
            bail!("{} holds no PEM certificate", path.display());
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().context("cannot set up the HTTP client")
}

/// Follow redirects, but never from https to http: that would let anyone on the path
/// between us and the plain-http host choose what we download next. The digest would
/// still catch altered bytes, yet an attacker could see what we fetch and stall us.
fn redirect_rule(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let previous = attempt.previous();
    let from = previous.last();
    if from.is_some_and(|f| f.scheme() == "https") && attempt.url().scheme() != "https" {
        let from = from.map(redact_url).unwrap_or_default();
        let to = redact_url(attempt.url());
        return attempt.error(FetchError::InsecureRedirect { from, to });
    }
    if previous.len() > MAX_REDIRECTS {
        let url = previous.first().map(redact_url).unwrap_or_default();
        return attempt.error(FetchError::TooManyRedirects { url, limit: MAX_REDIRECTS });
    }
    attempt.follow()
}

/// Stream `url` into `out`, hashing and counting on the way. Returns the digest and size.
pub(super) fn download(
    client: &reqwest::blocking::Client,
    options: &FetchOptions,
    url: &Url,
    name: &str,
    out: &mut File,
) -> Result<(Sha256Hex, u64)> {
    let shown = redact_url(url);
    let response = client.get(url.clone()).send().map_err(|e| request_error(e, &shown))?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::HttpStatus { url: shown, status: status.as_u16() }.into());
    }
    let length = response.content_length();
    let limit = options.max_download_bytes;
    if length.is_some_and(|n| n > limit) {
        // Refuse before reading a byte; the limit reader below still guards bodies
        // whose length is not announced, or announced falsely.
        return Err(FetchError::TooLarge { url: shown, limit }.into());
    }

    let bar = progress_bar(options.progress, name, length);
    let rate = RateWatch::new(bar.wrap_read(response), options.min_download_rate, options.stall_timeout);
    let mut reader = HashingReader::new(LimitReader::new(rate, limit, &shown));
    let copied = copy_interruptibly(&options.interrupt, &mut reader, out);
    let received = reader.count();
    if let Err(err) = copied {
        bar.abandon();
        if err.is::<Interrupted>() {
            return Err(err);
        }
        let io = err.downcast_ref::<std::io::Error>();
        if io.and_then(io_cause::<SizeLimitExceeded>).is_some() {
            return Err(FetchError::TooLarge { url: shown, limit }.into());
        }
        if let Some(slow) = io.and_then(io_cause::<TooSlow>) {
            let TooSlow { window, window_bytes } = *slow;
            let min_rate = options.min_download_rate;
            return Err(
                FetchError::TooSlow { url: shown, min_rate, window, window_bytes, received, expected: length }.into()
            );
        }
        // reqwest reports a read timeout as an io::Error wrapping its own error. A silent
        // server is reported as such even when the length is known: the connection is open.
        let stalled = io.is_some_and(|e| {
            e.kind() == std::io::ErrorKind::TimedOut
                || io_cause::<reqwest::Error>(e).is_some_and(reqwest::Error::is_timeout)
        });
        if stalled {
            let timeout = options.stall_timeout;
            return Err(FetchError::Stalled { url: shown, timeout, received, expected: length }.into());
        }
        if let Some(expected) = length.filter(|&n| received < n) {
            // The typed error on top, so callers can match it; hyper's words below.
            return Err(err.context(FetchError::Truncated { url: shown, expected, received }));
        }
        return Err(err.context(format!("downloading {shown} failed after {received} bytes")));
    }
    bar.finish_and_clear();
    let (digest, size) = reader.finish();
    // hyper already refuses a body that ends early; checking again costs nothing and does
    // not depend on that.
    if let Some(expected) = length.filter(|&n| n != size) {
        return Err(FetchError::Truncated { url: shown, expected, received: size }.into());
    }
    Ok((digest, size))
}

/// Fails a read once a whole window (the stall timeout) has passed with fewer than
/// `min_rate` bytes per second arriving in it. Each read blocks at most the stall timeout,
/// so a trickling server is stopped within about two windows.
#[derive(Debug)]
struct RateWatch<R> {
    inner: R,
    min_rate: u64,
    window: Duration,
    started: Instant,
    bytes: u64,
}

/// What [`RateWatch`] saw in the window that failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{window_bytes} bytes in {window:?}")]
struct TooSlow {
    window: Duration,
    window_bytes: u64,
}

impl<R> RateWatch<R> {
    fn new(inner: R, min_rate: u64, window: Duration) -> Self {
        Self { inner, min_rate, window, started: Instant::now(), bytes: 0 }
    }
}

impl<R: Read> Read for RateWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 || self.min_rate == 0 {
            return Ok(n);
        }
        self.bytes += n as u64;
        let elapsed = self.started.elapsed();
        if elapsed >= self.window {
            if (self.bytes as f64) < self.min_rate as f64 * elapsed.as_secs_f64() {
                return Err(std::io::Error::other(TooSlow { window: elapsed, window_bytes: self.bytes }));
            }
            (self.started, self.bytes) = (Instant::now(), 0);
        }
        Ok(n)
    }
}

/// Bring a redirect refusal back up as itself, and keep credentials out of the message:
/// reqwest's own text repeats the URL as given.
fn request_error(err: reqwest::Error, shown: &str) -> anyhow::Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(ours) = e.downcast_ref::<FetchError>() {
            return ours.clone().into();
        }
        source = e.source();
    }
    let what = if err.is_connect() {
        "cannot connect to"
    } else if err.is_timeout() {
        "timed out waiting for"
    } else {
        "request failed for"
    };
    anyhow::Error::new(err.without_url()).context(format!("{what} {shown}"))
}

fn progress_bar(enabled: bool, name: &str, length: Option<u64>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let (bar, template) = match length {
        Some(n) => (ProgressBar::new(n), "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"),
        None => (ProgressBar::new_spinner(), "{spinner} {msg} {bytes} {bytes_per_sec}"),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(name.to_owned());
    bar
}

/// Parse an artifact URL; only http and https are fetched.
pub(super) fn parse_url(raw: &str) -> Result<Url> {
    // Parse errors quote no part of the input, so nothing secret can leak from here.
    let url = Url::parse(raw).with_context(|| "an artifact URL is not a valid URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        bail!("{} is not an http(s) URL", redact_url(&url));
    }
    Ok(url)
}

/// `upstream` with its scheme, host and port replaced by `mirror`'s, and its path placed
/// after the mirror's path: with the mirror `http://mirror:8080/github/`,
/// `https://github.com/containerd/containerd/releases/download/v1.7.27/x.tar.gz` becomes
/// `http://mirror:8080/github/containerd/containerd/releases/download/v1.7.27/x.tar.gz`.
///
/// Credentials in the mirror URL are kept (they are for the mirror); any in the upstream URL
/// are dropped, so they never go to a different host.
pub fn mirror_url(upstream: &str, mirror: &Url) -> Result<Url> {
    let upstream = parse_url(upstream)?;
    if !matches!(mirror.scheme(), "http" | "https") || !mirror.has_host() {
        bail!("the mirror {} is not an http(s) URL", redact_url(mirror));
    }
    if mirror.query().is_some() || mirror.fragment().is_some() {
        bail!("the mirror {} has a query or fragment; give only scheme, host, port and path", redact_url(mirror));
    }
    let mut url = mirror.clone();
    let path = format!("{}{}", mirror.path().trim_end_matches('/'), upstream.path());
    url.set_path(&path);
    url.set_query(upstream.query());
    Ok(url)
}

/// `url` fit for messages and logs: user name, password and query string (signed download
/// links carry tokens there) are replaced by `REDACTED`.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        // Setting these fails only for URLs that cannot have credentials, which had none.
        let _ = shown.set_password(None);
        let _ = shown.set_username("REDACTED");
    }
    if shown.query().is_some() {
        shown.set_query(Some("REDACTED"));
    }
    shown.set_fragment(None);
    shown.into()
}

#[cfg(test)]
// A failed unwrap in a test is a test failure with a location: what we want.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UPSTREAM: &str = "https://github.com/containerd/containerd/releases/download/v1.7.27/cri-containerd-cni-1.7.27-linux-amd64.tar.gz";
    const PATH: &str = "/containerd/containerd/releases/download/v1.7.27/cri-containerd-cni-1.7.27-linux-amd64.tar.gz";

    fn mirror(m: &str) -> String {
        mirror_url(UPSTREAM, &Url::parse(m).unwrap()).unwrap().to_string()
    }

    #[test]
    fn mirror_replaces_scheme_host_and_port() {
        assert_eq!(mirror("http://10.0.0.5:8080"), format!("http://10.0.0.5:8080{PATH}"));
        assert_eq!(mirror("https://mirror.internal/"), format!("https://mirror.internal{PATH}"));
    }

    #[test]
    fn mirror_path_prefix_is_kept_with_or_without_slash() {
        let want = format!("http://host:8080/github{PATH}");
        assert_eq!(mirror("http://host:8080/github/"), want);
        assert_eq!(mirror("http://host:8080/github"), want);
        assert_eq!(mirror("http://host:8080/a/b//"), format!("http://host:8080/a/b{PATH}"));
    }

    #[test]
    fn mirror_credentials_stay_upstream_credentials_go() {
        let m = Url::parse("http://me:pw@host/").unwrap();
        let u = mirror_url("https://tok:en@github.com/x/y.tgz?a=1", &m).unwrap();
        assert_eq!(u.as_str(), "http://me:pw@host/x/y.tgz?a=1");
    }

    #[test]
    fn mirror_refuses_nonsense() {
        let q = Url::parse("http://host/?x=1").unwrap();
        assert!(mirror_url(UPSTREAM, &q).is_err());
        let ftp = Url::parse("ftp://host/").unwrap();
        assert!(mirror_url(UPSTREAM, &ftp).is_err());
        let http = Url::parse("http://host/").unwrap();
        assert!(mirror_url("not a url", &http).is_err());
        assert!(mirror_url("file:///etc/passwd", &http).is_err());
    }

    #[test]
    fn redaction_hides_credentials_and_tokens() {
        let u = Url::parse("https://user:s3cret@host/p?X-Amz-Signature=abc#f").unwrap();
        let shown = redact_url(&u);
        assert_eq!(shown, "https://REDACTED@host/p?REDACTED");
        assert!(!shown.contains("s3cret") && !shown.contains("abc"));
        let plain = Url::parse("https://host/p").unwrap();
        assert_eq!(redact_url(&plain), "https://host/p");
    }
}
