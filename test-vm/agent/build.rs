//! Generates the CRI gRPC client (runtime.v1 and runtime.v1alpha2) from the vendored
//! upstream protos, with `protox` instead of `protoc` so nothing outside Cargo is needed.
//!
//! The upstream files import gogoproto only for Go code-generation options; the import and
//! those options are dropped from a copy in OUT_DIR (see proto/cri-api/README.md).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const VERSIONS: [&str; 2] = ["v1", "v1alpha2"];

fn main() -> Result<()> {
    let src_root = Path::new("proto/cri-api");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is not set")?);
    let include = out_dir.join("cri-proto");
    let mut files = Vec::new();
    for v in VERSIONS {
        let src = src_root.join(v).join("api.proto");
        println!("cargo:rerun-if-changed={}", src.display());
        let text = fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        let dst_dir = include.join(v);
        fs::create_dir_all(&dst_dir).with_context(|| format!("creating {}", dst_dir.display()))?;
        let dst = dst_dir.join("api.proto");
        fs::write(&dst, strip_go_options(&text)).with_context(|| format!("writing {}", dst.display()))?;
        files.push(format!("{v}/api.proto"));
    }
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile(&files, [&include]).context("compiling the CRI protos with protox")?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)
        .context("generating the CRI client")?;
    Ok(())
}

/// Removes the gogoproto import and options and any `[debug_redact = true]` field option.
fn strip_go_options(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("import \"github.com/gogo/protobuf/gogoproto/gogo.proto\"")
            || t.starts_with("option (gogoproto.")
        {
            out.push('\n'); // keep line numbers, so protox errors point at the vendored file
            continue;
        }
        out.push_str(&line.replace(" [debug_redact = true]", ""));
        out.push('\n');
    }
    out
}
