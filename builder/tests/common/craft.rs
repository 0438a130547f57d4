//! Release archives crafted byte by byte: ustar headers written by hand, because a
//! well-behaved tar writer refuses to produce most of the attacks the tests need.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

/// (name, typeflag, link target, data)
pub type RawEntry = (&'static str, u8, &'static str, Vec<u8>);

pub fn header(name: &str, typeflag: u8, link: &str, size: usize, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

/// A tar stream from (name, typeflag, link target, data).
pub fn tar(entries: &[(&str, u8, &str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, link, data) in entries {
        out.extend_from_slice(&header(name, *t, link, data.len(), 0o755));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn elf(machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b
}

pub fn file(name: &'static str, data: Vec<u8>) -> RawEntry {
    (name, b'0', "", data)
}

/// The members of a minimal but complete bundle.
pub fn good_entries() -> Vec<RawEntry> {
    let mut v = vec![("etc/", b'5', "", vec![]), file("etc/crictl.yaml", b"runtime-endpoint: x\n".to_vec())];
    for b in [
        "usr/local/bin/containerd",
        "usr/local/bin/containerd-shim-runc-v2",
        "usr/local/bin/ctr",
        "usr/local/bin/crictl",
        "usr/local/bin/critest",
        "usr/local/sbin/runc",
        "opt/cni/bin/bridge",
        "opt/cni/bin/host-local",
        "opt/cni/bin/loopback",
        "opt/cni/bin/portmap",
    ] {
        v.push(file(b, elf(62)));
    }
    v.push(file("opt/containerd/cluster/version", b"CONTAINERD_VERSION: '1.7.27'\n".to_vec()));
    v
}

/// Bytes no compressor can shrink (xorshift), so writing them through gzip takes real time.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A minimal profile for a crafted bundle at `url` with digest `sha256`, plus `extra` TOML.
pub fn bundle_profile(name: &str, url: &str, sha256: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\n[kubernetes]\nversion = \"1.30.2\"\n[containerd]\nversion = \"1.7.27\"\n\
         [containerd.bundle]\nurl = \"{url}\"\nsha256 = \"{sha256}\"\n{extra}"
    )
}

/// The good bundle plus one more entry.
pub fn with(extra: RawEntry) -> Vec<RawEntry> {
    let mut v = good_entries();
    v.push(extra);
    v
}
