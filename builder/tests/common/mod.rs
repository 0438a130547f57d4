//! Helpers shared by the integration tests. Each test binary compiles this module on its own
//! and uses only part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod base;
pub mod containerd;
pub mod craft;
pub mod http_server;
pub mod standin;
pub mod tls;
