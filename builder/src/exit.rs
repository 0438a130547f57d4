//! The failure classes behind nodeforge's documented exit codes.
//!
//! A class is attached as anyhow context where a command's work crosses a boundary (loading
//! the profile, downloading, reading an upstream archive), so the exit code follows from
//! where a run failed, not from parsing message text. Every layer may attach one; only the
//! binary reads it back ([`ExitClass::exit_code`]).

/// A documented exit code, and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    Profile,
    Fetch,
    Archive,
    /// A flag's value or a file it names is unusable (exit 2, like clap's own usage errors).
    Usage,
    /// `replace`: a PodDisruptionBudget kept a pod from being evicted (exit 10).
    DrainBlocked,
    /// `replace`: pods would be lost (unmanaged, or with emptyDir data) without --force or
    /// --delete-emptydir-data (exit 11).
    PodsWouldBeLost,
    /// `replace`: the reprovision command failed (exit 12).
    Reprovision,
    /// `replace`: the node did not come back Ready from a new boot in time (exit 13).
    NodeNotBack,
    /// `replace`: the node came back on another container runtime (exit 14).
    WrongRuntime,
    /// `replace`: the API server cannot be reached (exit 15).
    Unreachable,
    /// `replace`: the kubeconfig's credentials are refused or lack a permission (exit 16).
    Forbidden,
}

impl ExitClass {
    /// The documented exit code of this failure class.
    pub fn exit_code(self) -> u8 {
        match self {
            ExitClass::Usage => 2,
            ExitClass::Profile => 3,
            ExitClass::Fetch => 4,
            ExitClass::Archive => 5,
            ExitClass::DrainBlocked => 10,
            ExitClass::PodsWouldBeLost => 11,
            ExitClass::Reprovision => 12,
            ExitClass::NodeNotBack => 13,
            ExitClass::WrongRuntime => 14,
            ExitClass::Unreachable => 15,
            ExitClass::Forbidden => 16,
        }
    }
}

impl std::fmt::Display for ExitClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExitClass::Profile => "invalid profile",
            ExitClass::Fetch => "download failed",
            ExitClass::Archive => "unsafe or malformed archive or site overlay",
            ExitClass::Usage => "usage error",
            ExitClass::DrainBlocked => "drain blocked by a PodDisruptionBudget",
            ExitClass::PodsWouldBeLost => "drain would lose pods",
            ExitClass::Reprovision => "reprovision failed",
            ExitClass::NodeNotBack => "node did not come back",
            ExitClass::WrongRuntime => "node came back on another runtime",
            ExitClass::Unreachable => "cluster unreachable",
            ExitClass::Forbidden => "forbidden by the cluster",
        })
    }
}
