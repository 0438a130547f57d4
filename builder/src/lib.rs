//! nodeforge: build Kubernetes nodes that run on containerd.
//!
//! The data path reads straight through: a [`profile`] names the sources; [`fetch`]
//! downloads and verifies them; [`release`] selects what a node needs from the upstream
//! archive; [`render`] generates the configuration; all of it lands in an [`overlay`] value
//! that the writers in [`archive`], [`seed`] and [`manifest`] serialise. [`build`] runs the
//! whole path.

pub mod archive;
pub mod build;
pub mod check;
pub mod cli;
pub mod commands;
pub mod compat;
pub mod fetch;
pub mod imageref;
pub mod io;
pub mod manifest;
pub mod output;
pub mod overlay;
pub mod profile;
pub mod release;
pub mod render;
pub mod seed;
pub mod version;
