//! Readiness: one HTTP client (kube-rs) for every health endpoint, and one waiting loop that
//! also notices a component exiting and a signal.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nodeforge::io::{Interrupt, Interrupted};

use super::running::{ComponentError, Running};

/// Time between two checks.
pub const POLL: Duration = Duration::from_millis(100);
/// One check's limit (connect, send, answer).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for the control plane's own endpoints, with bounded timeouts.
pub fn bounded(mut config: Config) -> Result<Client> {
    config.connect_timeout = Some(CHECK_TIMEOUT);
    config.read_timeout = Some(CHECK_TIMEOUT);
    config.write_timeout = Some(CHECK_TIMEOUT);
    let url = config.cluster_url.to_string();
    Client::try_from(config).with_context(|| format!("a client for {url}"))
}

/// A client from a kubeconfig's current context.
pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("the kubeconfig {}", kubeconfig.display()))?;
    bounded(config)
}

/// `GET path` answering 2xx with the body `ok`: `/readyz`, `/healthz`.
pub struct Probe {
    client: Client,
    path: &'static str,
    url: String,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Probe {
    /// `base` (`http://` or `https://`); `insecure` skips certificate verification, for the
    /// controller-manager's self-signed serving certificate on 127.0.0.1 and nothing else.
    pub fn url(base: &str, path: &'static str, insecure: bool) -> Result<Self> {
        let uri = base.parse().with_context(|| format!("`{base}` is not a URL"))?;
        let mut config = Config::new(uri);
        config.accept_invalid_certs = insecure;
        // A probe that fails is retried by the caller; no retries inside the client.
        config.default_retry = false;
        Ok(Self { client: bounded(config)?, path, url: format!("{base}{path}") })
    }

    /// Through a kubeconfig's server and credentials.
    pub async fn kubeconfig(file: &Path, path: &'static str) -> Result<Self> {
        let client = client_from(file).await?;
        let url = format!("{}{path}", client_url(file));
        Ok(Self { client, path, url })
    }

    pub async fn ok(&self) -> Result<(), String> {
        let req = http::Request::get(self.path).body(Vec::new()).map_err(|e| e.to_string())?;
        match self.client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => Ok(()),
            Ok(body) => Err(format!("GET {} answered {:?}", self.url, body.trim())),
            Err(e) => Err(format!("GET {}: {}", self.url, chain(&e))),
        }
    }
}

/// The server of a kubeconfig, for messages only.
fn client_url(file: &Path) -> String {
    Kubeconfig::read_from(file)
        .ok()
        .and_then(|kc| kc.clusters.into_iter().next())
        .and_then(|c| c.cluster)
        .and_then(|c| c.server)
        .unwrap_or_else(|| file.display().to_string())
}

/// An error with its causes, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What [`wait_for`] waits for and whom it blames.
#[derive(Debug, Clone, Copy)]
pub struct Wait<'a> {
    /// The component that should make it happen (named in the error if it does not).
    pub blame: &'a str,
    /// "become ready (GET /readyz)", "sign cluster-info": completes "did not ... within".
    pub what: &'a str,
    pub deadline: Instant,
    /// The whole start's limit, for the message.
    pub limit: Duration,
}

/// Call `check` every [`POLL`] until it succeeds. Fails when a component exits (that one is
/// named), on a signal, or at the deadline (`w.blame` is named with the last check's answer).
pub async fn wait_for(
    running: &mut Running,
    interrupt: &Interrupt,
    w: Wait<'_>,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) -> Result<()> {
    loop {
        running.check(&format!("while test-vm waited for {} to {}", w.blame, w.what))?;
        if interrupt.is_set() {
            return Err(Interrupted.into());
        }
        let left = w.deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(left.min(CHECK_TIMEOUT), check()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} s", left.min(CHECK_TIMEOUT).as_secs()),
        };
        if Instant::now() >= w.deadline {
            let log = running.log_of(w.blame).unwrap_or_default();
            let problem =
                format!("did not {} within the start limit of {} s (last check: {last})", w.what, w.limit.as_secs());
            return Err(ComponentError::new(w.blame, problem, &log).into());
        }
        tokio::time::sleep(POLL).await;
    }
}
