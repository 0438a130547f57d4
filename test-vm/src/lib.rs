//! test-vm: boot what nodeforge built in QEMU and check, stage by stage, that the node would
//! run its pods on containerd.
//!
//! The path of a run reads straight through: [`cli`] flags → [`expect`] (what the node should
//! be, from the build manifest) → [`initrd`] (the built initrd plus an archive carrying the
//! agent) → [`qemu`] (the command line and the always-reaped process, under the accelerator
//! [`accel`] picked) → [`run`] (watching [`serial`] output and the agent's [`protocol`] lines,
//! advancing [`stages`], then [`join`] through the API server when asked) → [`report`].
//! [`fleet`] runs that path once per node of one image, in sequence or in parallel.
//! `cluster` (feature `join`) runs a kubeadm-bootstrapped control plane on the host for
//! guests to join; it and [`qemu`] start their children through [`supervise`].

pub mod accel;
pub mod cli;
#[cfg(feature = "join")]
pub mod cluster;
pub mod expect;
pub mod fleet;
pub mod initrd;
pub mod join;
pub mod protocol;
pub mod qemu;
pub mod report;
pub mod run;
pub mod seed;
pub mod serial;
pub mod stages;
pub mod supervise;
