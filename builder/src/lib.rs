//! nodeforge: build Kubernetes nodes that run on containerd.
//!
//! The data path reads straight through: a [`profile`] names the sources; [`fetch`]
//! downloads and verifies them; [`release`] selects what a node needs from the upstream
//! archive; [`render`] generates the configuration; [`site`] reads the operator's own files
//! with the same care; all of it lands in an [`overlay`] value that the writers in
//! [`archive`], [`seed`] and [`manifest`] serialise. [`build`] runs the whole path; [`image`] lays the result onto a base root tree as a bootable test node.

/// Implement `Serialize`/`Deserialize` through `Display`/`FromStr`, for values that have one
/// canonical spelling (versions, image references, digests).
#[macro_export]
#[doc(hidden)]
macro_rules! serde_via_str {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod archive;
pub mod build;
pub mod check;
pub mod cli;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod commands;
pub mod compat;
pub mod digest;
pub mod duration;
pub mod exit;
pub mod fetch;
pub mod ident;
pub mod image;
pub mod imageref;
pub mod io;
pub mod lock;
pub mod manifest;
pub mod output;
pub mod overlay;
pub mod profile;
pub mod release;
pub mod render;
#[cfg(feature = "cluster")]
pub mod replace;
pub mod seed;
pub mod site;
pub mod table;
pub mod version;
