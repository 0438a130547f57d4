//! A real Kubernetes control plane on this host, as plain processes, for guests to
//! `kubeadm join` exactly as they would join a kubeadm cluster.
//!
//! No container runtime on the host: kubeadm's own phases make the PKI, the kubeconfigs, the
//! uploaded configuration and the bootstrap token with its RBAC and `cluster-info`; etcd,
//! kube-apiserver and kube-controller-manager run as children of this process with the flags
//! kubeadm's static-pod manifests would give them. Everything listens on 127.0.0.1 only and
//! lives in one work directory ([`layout`]). A QEMU guest with user networking reaches the
//! host's 127.0.0.1 as 10.0.2.2, so the cluster's endpoint is `10.0.2.2:PORT` (certificates,
//! kubeconfigs, `cluster-info`) while host tools use `https://127.0.0.1:PORT`.
//!
//! The path of a start: [`layout`] → [`kubeadm`] (configuration, `certs all`, `kubeconfig
//! admin|super-admin|controller-manager`, host copies) → [`components`] started by
//! [`running`] and awaited by [`health`] (etcd `/readyz`, API server `/readyz`,
//! controller-manager `/healthz`) → [`bootstrap`] (kubeadm's admin binding, `upload-config
//! all`, `bootstrap-token`, `cluster-info` naming the guest endpoint and signed for our token,
//! the `default` ServiceAccount) → [`output`] (what a user needs; [`pki`] computes the CA
//! pin). [`serve`] is the `test-vm control-plane` command around it.

pub mod bootstrap;
pub mod components;
pub mod health;
pub mod kubeadm;
pub mod layout;
pub mod output;
pub mod pki;
pub mod running;
pub mod serve;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nodeforge::io::Interrupt;

pub use components::{APISERVER, CONTROLLER_MANAGER, ETCD};
pub use output::{ComponentInfo, ControlPlaneInfo, Timing};
pub use pki::{BootstrapToken, ca_cert_hash, detached_jws, jws_is_valid};
pub use running::ComponentError;
pub use serve::{Ended, ServeOptions, serve};

use components::Ports;
use health::{Probe, Wait, wait_for};
use kubeadm::{Kubeadm, View};
use layout::{Layout, write_private};
use running::Running;

/// The host as a QEMU user-networking guest sees it.
pub const GUEST_HOST: &str = "10.0.2.2";
/// The control plane's node name in kubeadm's configuration (certificate SANs, etcd's name).
pub const NODE_NAME: &str = "nodeforge-control-plane";
/// What `--bin-dir` must hold.
pub const BINARIES: [&str; 4] = ["etcd", "kube-apiserver", "kube-controller-manager", "kubeadm"];
/// Starts on fresh ports after a component found its port taken.
const ATTEMPTS: u32 = 3;

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Holds [`BINARIES`] (kubectl and kubelet may be there too; they are not used).
    pub bin_dir: PathBuf,
    /// The work directory: created, or empty. Everything is written under it.
    pub dir: PathBuf,
    /// `kubernetesVersion` [default: `kubeadm version -o short`]. The API server must report it.
    pub kubernetes_version: Option<String>,
    /// Limit for the whole start, from nothing to ready.
    pub start_timeout: Duration,
    /// Per component, between SIGTERM and SIGKILL when stopping.
    pub stop_grace: Duration,
    /// Polled while starting: a signal ends the start (and stops what was started).
    pub interrupt: Interrupt,
}

impl ControlPlaneConfig {
    pub fn new(bin_dir: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Self {
        Self {
            bin_dir: bin_dir.into(),
            dir: dir.into(),
            kubernetes_version: None,
            start_timeout: Duration::from_secs(180),
            stop_grace: Duration::from_secs(10),
            interrupt: Interrupt::default(),
        }
    }
}

/// A running control plane. Every process it started is stopped by [`ControlPlane::stop`]
/// or when it is dropped; `kill -9` of this process is covered by `PR_SET_PDEATHSIG`.
#[derive(Debug)]
pub struct ControlPlane {
    info: ControlPlaneInfo,
    running: Running,
}

impl ControlPlane {
    /// Start and wait until a guest could join: see the module documentation. On error every
    /// process started so far is stopped; a component that exited or did not become ready is
    /// a [`ComponentError`] (downcast the `anyhow::Error`) quoting its log's tail.
    pub fn start(cfg: &ControlPlaneConfig) -> Result<Self> {
        let t0 = Instant::now();
        let bins = Binaries::find(&cfg.bin_dir)?;
        let layout = Layout::create(&cfg.dir)?;
        let version = match &cfg.kubernetes_version {
            Some(v) => {
                kubeadm::check_version(v)?;
                v.clone()
            }
            None => kubeadm::version(&bins.kubeadm)?,
        };
        let token = BootstrapToken::generate()?;
        write_private(&layout.token_file(), format!("{}\n", token.expose()).as_bytes())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime for the API clients")?;
        let mut start = Start {
            cfg,
            bins: &bins,
            layout: &layout,
            version: &version,
            token: &token,
            running: Running::new(cfg.stop_grace)?,
            deadline: t0 + cfg.start_timeout,
            t0,
            timings: Vec::new(),
        };
        let ports = rt.block_on(start.components())?;
        rt.block_on(start.bootstrap(ports))?;
        let pem = std::fs::read(layout.ca_cert()).with_context(|| format!("reading {}", layout.ca_cert().display()))?;
        let ca_cert_hash = ca_cert_hash(&pem).with_context(|| format!("{}", layout.ca_cert().display()))?;
        let Start { running, timings, .. } = start;
        let info = ControlPlaneInfo::new(&layout, &version, ports, ca_cert_hash, &running, t0.elapsed(), timings);
        Ok(Self { info, running })
    }

    /// Endpoint, token file, CA pin, kubeconfigs, components: what [`output`] prints.
    pub fn info(&self) -> &ControlPlaneInfo {
        &self.info
    }

    /// An error naming the first component that has exited since the start.
    pub fn check(&mut self) -> Result<(), ComponentError> {
        self.running.check("while the control plane was running")
    }

    /// SIGTERM each component (controller-manager, API server, etcd), SIGKILL after the
    /// grace period, wait for each to exit. Idempotent.
    pub fn stop(&mut self) {
        self.running.stop_all();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The programs in `--bin-dir`.
#[derive(Debug)]
struct Binaries {
    etcd: PathBuf,
    apiserver: PathBuf,
    controller_manager: PathBuf,
    kubeadm: PathBuf,
}

impl Binaries {
    fn find(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.canonicalize().with_context(|| format!("the binary directory {}", dir.display()))?;
        for name in BINARIES {
            let p = dir.join(name);
            let executable = std::fs::metadata(&p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !executable.unwrap_or(false) {
                bail!("no executable {name} in {} (it needs {})", dir.display(), BINARIES.join(", "));
            }
        }
        Ok(Self {
            etcd: dir.join("etcd"),
            apiserver: dir.join("kube-apiserver"),
            controller_manager: dir.join("kube-controller-manager"),
            kubeadm: dir.join("kubeadm"),
        })
    }
}

/// One start in progress.
struct Start<'a> {
    cfg: &'a ControlPlaneConfig,
    bins: &'a Binaries,
    layout: &'a Layout,
    version: &'a str,
    token: &'a BootstrapToken,
    running: Running,
    deadline: Instant,
    t0: Instant,
    timings: Vec<Timing>,
}

impl Start<'_> {
    fn mark(&mut self, step: &str) {
        self.timings.push(Timing { step: step.to_owned(), at_ms: self.t0.elapsed().as_millis() as u64 });
    }

    fn kubeadm(&self) -> Kubeadm<'_> {
        Kubeadm { bin: &self.bins.kubeadm, layout: self.layout }
    }

    fn wait<'w>(&self, blame: &'w str, what: &'w str) -> Wait<'w> {
        Wait { blame, what, deadline: self.deadline, limit: self.cfg.start_timeout }
    }

    /// A kubeadm phase; if it fails because a component died meanwhile, that is the error.
    fn phase(&mut self, args: &[&str], extra: &[&OsStr], view: View) -> Result<()> {
        let result = self.kubeadm().phase(args, extra, view, self.deadline);
        result.map_err(|e| match self.running.check("while kubeadm ran") {
            Err(died) => died.into(),
            Ok(()) => e,
        })
    }

    /// The components up and healthy, on fresh ports for each attempt.
    async fn components(&mut self) -> Result<Ports> {
        let mut attempt = 1;
        loop {
            let ports = Ports::pick()?;
            let err = match self.components_on(ports).await {
                Ok(()) => return Ok(ports),
                Err(e) => e,
            };
            let port_taken = err.downcast_ref::<ComponentError>().is_some_and(ComponentError::port_in_use);
            if !port_taken || attempt == ATTEMPTS {
                return Err(err);
            }
            self.running.stop_all();
            // etcd's data names its peer URL: a new port needs a new member.
            let data = self.layout.etcd_data();
            if data.exists() {
                std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
            }
            self.mark(&format!("attempt {attempt} failed, a port was taken: {}", first_line(&err)));
            attempt += 1;
        }
    }

    async fn components_on(&mut self, ports: Ports) -> Result<()> {
        let l = self.layout;
        for (view, path) in [(View::Host, l.kubeadm_config()), (View::Cluster, l.kubeadm_cluster_config())] {
            let config = kubeadm::render_config(l, self.version, self.token, ports.api, view);
            write_private(&path, config.as_bytes())?;
        }
        self.kubeadm().pki_and_kubeconfigs(ports.api, self.deadline)?;
        self.mark("kubeadm certs and kubeconfigs");

        self.running.start(ETCD, &self.bins.etcd, &components::etcd_args(l, &ports), &l.log(ETCD))?;
        let etcd = Probe::url(&format!("http://127.0.0.1:{}", ports.etcd_metrics), "/readyz", false)?;
        let w = self.wait(ETCD, "become ready (GET /readyz on its metrics port)");
        wait_for(&mut self.running, &self.cfg.interrupt, w, async || etcd.ok().await).await?;
        self.mark(ETCD);

        self.running.start(
            APISERVER,
            &self.bins.apiserver,
            &components::apiserver_args(l, &ports),
            &l.log(APISERVER),
        )?;
        let admin = l.host_kubeconfig("admin");
        let api = Probe::kubeconfig(&admin, "/readyz").await?;
        let w = self.wait(APISERVER, "become ready (GET /readyz)");
        wait_for(&mut self.running, &self.cfg.interrupt, w, async || api.ok().await).await?;
        let client = health::client_from(&admin).await?;
        if let Err(problem) = bootstrap::check_version(&client, self.version).await {
            return Err(ComponentError::new(APISERVER, problem, &l.log(APISERVER)).into());
        }
        self.mark(APISERVER);

        let kcm_args = components::controller_manager_args(l, &ports);
        self.running.start(CONTROLLER_MANAGER, &self.bins.controller_manager, &kcm_args, &l.log(CONTROLLER_MANAGER))?;
        let kcm = Probe::url(&format!("https://127.0.0.1:{}", ports.controller_manager), "/healthz", true)?;
        let w = self.wait(CONTROLLER_MANAGER, "become healthy (GET /healthz)");
        wait_for(&mut self.running, &self.cfg.interrupt, w, async || kcm.ok().await).await?;
        self.mark(CONTROLLER_MANAGER);
        Ok(())
    }

    /// kubeadm's API-side phases and what makes the cluster joinable from a guest.
    async fn bootstrap(&mut self, ports: Ports) -> Result<()> {
        let l = self.layout;
        let super_admin = health::client_from(&l.host_kubeconfig("super-admin")).await?;
        let w = self.wait(APISERVER, "accept the kubeadm:cluster-admins ClusterRoleBinding");
        wait_for(&mut self.running, &self.cfg.interrupt, w, async || {
            bootstrap::ensure_admin_binding(&super_admin).await
        })
        .await?;

        let admin = l.host_kubeconfig("admin");
        let kc = [OsStr::new("--kubeconfig"), admin.as_os_str()];
        // What joining nodes read (kubeadm-config, kubelet-config) names a node's paths.
        self.phase(&["upload-config", "all"], &kc, View::Cluster)?;
        // --skip-token-print: the token goes into no output, kubeadm's log included.
        self.phase(&["bootstrap-token"], &[kc[0], kc[1], OsStr::new("--skip-token-print")], View::Cluster)?;
        self.mark("kubeadm upload-config all, bootstrap-token");

        let client = health::client_from(&admin).await?;
        let (host, guest) = (kubeadm::host_server(ports.api), kubeadm::guest_server(ports.api));
        let token = self.token;
        let w = self.wait(CONTROLLER_MANAGER, "sign cluster-info naming the guest endpoint (bootstrapsigner)");
        wait_for(&mut self.running, &self.cfg.interrupt, w, async || {
            bootstrap::cluster_info_step(&client, &host, &guest, token).await
        })
        .await?;
        self.mark("cluster-info signed for the guest endpoint");

        let w = self.wait(CONTROLLER_MANAGER, "create the default ServiceAccount");
        wait_for(&mut self.running, &self.cfg.interrupt, w, async || bootstrap::default_service_account(&client).await)
            .await?;
        self.mark("default ServiceAccount");
        Ok(())
    }
}

fn first_line(e: &anyhow::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}
