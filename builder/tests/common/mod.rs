//! Helpers shared by the integration tests. Each test binary compiles this module on its own
//! and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod base;
pub mod containerd;
pub mod craft;
pub mod standin;
pub mod tls;

// The HTTP server lives in the shared test-support crate; test-vm's tests use it too.
pub use test_support::http_server;

/// A finished command's status and output, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run the `nodeforge` binary under test with its own download cache and none of the
/// environment a developer's shell might carry (a mirror, a fixed timestamp).
pub fn nodeforge(args: &[&str], cache: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .args(args)
        .env("NODEFORGE_CACHE_DIR", cache)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("NODEFORGE_MIRROR")
        .output()
        .expect("running nodeforge")
}

/// A test path as a command-line argument.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
