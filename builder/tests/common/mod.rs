//! Helpers shared by the integration tests. Each test binary compiles this module on its own
//! and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod base;
pub mod containerd;
pub mod craft;
pub mod http_server;
pub mod standin;
pub mod tls;

/// A finished command's status and output, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
