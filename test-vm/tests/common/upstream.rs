// The real upstream programs (fixtures/upstream/build-upstream.sh: Kubernetes, etcd,
// containerd 2.x, runc, CNI plugins, crictl, built from their Go modules), published once per
// test binary under its target tmpdir. The script caches its build and locks; after the first
// build anywhere on the machine this takes seconds. (Included with `include!`, so it needs no
// module of its own in test files that use nothing else from `common`.)

/// What the script published.
#[derive(Debug)]
pub struct Upstream {
    /// The host's copies: etcd, kube-apiserver, kube-controller-manager, kubeadm, kubectl, ...
    pub bin: std::path::PathBuf,
}

pub fn upstream() -> &'static Upstream {
    static U: std::sync::OnceLock<Upstream> = std::sync::OnceLock::new();
    U.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("upstream");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/upstream/build-upstream.sh");
        let out = std::process::Command::new("bash").arg(&script).arg(&dir).output().expect("running build-upstream.sh");
        assert!(
            out.status.success(),
            "build-upstream.sh failed (it needs Go and the Go module proxy; `make test` installs the rest):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Upstream { bin: dir.join("bin") }
    })
}

/// Where the host's Kubernetes programs are: `NODEFORGE_K8S_BIN_DIR` when set (programs built
/// elsewhere), else the fixture's.
pub fn bin_dir() -> std::path::PathBuf {
    match std::env::var_os("NODEFORGE_K8S_BIN_DIR") {
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ => upstream().bin.clone(),
    }
}
