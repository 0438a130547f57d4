//! Helpers shared by the integration tests of `nodeforge` and `test-vm`. A dev-dependency
//! only: nothing here reaches a shipped binary.

pub mod http_server;
