//! The kernel modules the boot initramfs loads, resolved from the base's `modules.dep`.
//!
//! In Debian's kernel the virtio transport, the virtio disk and ext4 are all modules, and
//! `insmod` (all busybox offers without modprobe's index files) loads exactly one file and
//! resolves nothing: the initramfs must carry every dependency and load it first. The order
//! is computed here, at build time, from the same `modules.dep` modprobe would read, never
//! kept by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// What mounting an ext4 root on a virtio disk needs, in the order the harness thinks of it;
/// dependencies are added in front of each.
///
/// `crc32c_generic` is ext4's soft dependency (`modules.softdep`: `pre: crypto-crc32c`):
/// mounting a filesystem with metadata checksums (mke2fs' default) asks the crypto API for
/// crc32c, which would autoload it through modprobe — absent in the initramfs. The generic
/// implementation rather than `crc32c_intel`, which refuses CPUs without SSE4.2, such as
/// QEMU's default TCG model.
pub const BOOT_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// One module, ready to be stored uncompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootModule {
    /// The kernel's name for it (`virtio_ring`).
    pub name: String,
    /// Its path under `/lib/modules/<ver>/`, as `modules.dep` spells it.
    pub rel_path: String,
    pub bytes: Vec<u8>,
}

/// `modules.dep`, parsed: module name → (path, the paths it depends on).
#[derive(Debug, Default)]
pub struct ModulesDep {
    modules: BTreeMap<String, (String, Vec<String>)>,
    by_path: BTreeMap<String, String>,
}

/// The kernel's module name for a path: the file name without `.ko[.xz|.zst|.gz]`, dashes as
/// underscores (the kernel treats them as the same).
pub fn module_name(rel_path: &str) -> String {
    let file = rel_path.rsplit('/').next().unwrap_or(rel_path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModulesDep {
    pub fn parse(text: &str) -> Result<Self> {
        let mut dep = ModulesDep::default();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                bail!("modules.dep line {}: no `:` in {line:?}", n + 1);
            };
            let path = path.trim().to_owned();
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            dep.by_path.insert(path.clone(), module_name(&path));
            dep.modules.insert(module_name(&path), (path, deps));
        }
        Ok(dep)
    }

    /// Every module `wanted` needs, each after all of its dependencies, each once.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(&w.replace('-', "_"), &mut order, &mut done, &mut BTreeSet::new())
                .with_context(|| format!("resolving kernel module {w}"))?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        order: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if !visiting.insert(name.to_owned()) {
            bail!("modules.dep has a dependency cycle through {name}");
        }
        let Some((path, deps)) = self.modules.get(name) else {
            bail!("{name} is not in modules.dep (built in? then it needs no loading; otherwise the base lacks it)");
        };
        for d in deps {
            let dep_name = self.by_path.get(d).cloned().unwrap_or_else(|| module_name(d));
            self.visit(&dep_name, order, done, visiting)?;
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        order.push(path.clone());
        Ok(())
    }
}

/// Names listed in `modules.builtin` (paths like `kernel/fs/ext4/ext4.ko`).
fn builtin(modules_dir: &Path) -> BTreeSet<String> {
    fs::read_to_string(modules_dir.join("modules.builtin"))
        .map(|t| t.lines().map(module_name).collect())
        .unwrap_or_default()
}

/// Resolve [`BOOT_MODULES`] (minus any built into the kernel) and read each module,
/// decompressing `.ko.xz` / `.ko.zst` / `.ko.gz`: busybox's insmod may be built without
/// decompression support, so the initramfs stores plain `.ko` files.
pub fn boot_modules(modules_dir: &Path) -> Result<Vec<BootModule>> {
    let dep_path = modules_dir.join("modules.dep");
    let text = fs::read_to_string(&dep_path)
        .with_context(|| format!("reading {} (run depmod on the base)", dep_path.display()))?;
    let dep = ModulesDep::parse(&text).with_context(|| format!("parsing {}", dep_path.display()))?;
    let builtin = builtin(modules_dir);
    let wanted: Vec<&str> = BOOT_MODULES.iter().copied().filter(|m| !builtin.contains(*m)).collect();
    let mut out = Vec::new();
    for rel_path in dep.load_order(&wanted)? {
        let path = modules_dir.join(&rel_path);
        let bytes = read_module(&path).with_context(|| format!("reading module {}", path.display()))?;
        out.push(BootModule { name: module_name(&rel_path), rel_path, bytes });
    }
    Ok(out)
}

/// A module's ELF bytes, decompressed according to its extension.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path)?;
    let name = path.to_string_lossy();
    let bytes = if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &raw[..], &mut out).map_err(|e| anyhow::anyhow!("xz: {e}"))?;
        out
    } else if name.ends_with(".ko.zst") {
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&raw[..])
            .map_err(|e| anyhow::anyhow!("zstd: {e}"))?
            .read_to_end(&mut out)?;
        out
    } else if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out)?;
        out
    } else if name.ends_with(".ko") {
        raw
    } else {
        bail!("not a kernel module file name (.ko, .ko.xz, .ko.zst, .ko.gz)");
    };
    if !bytes.starts_with(b"\x7fELF") {
        bail!("not an ELF object after decompression");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn dependencies_load_first_and_once() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let names: Vec<String> = dep.load_order(BOOT_MODULES).unwrap().iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "crc32c_generic",
                "crc16",
                "mbcache",
                "jbd2",
                "ext4"
            ]
        );
        assert!(dep.load_order(&["nope"]).is_err());
    }

    #[test]
    fn names_drop_compression_suffixes_and_dashes() {
        assert_eq!(module_name("kernel/a/virtio-blk.ko.zst"), "virtio_blk");
        assert_eq!(module_name("kernel/a/ext4.ko.xz"), "ext4");
    }

    #[test]
    fn compressed_modules_are_stored_plain() {
        let dir = tempfile::tempdir().unwrap();
        let elf = b"\x7fELF-module-bytes".to_vec();
        let gz = dir.path().join("m.ko.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &elf).unwrap();
        fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_module(&gz).unwrap(), elf);
        let xz = dir.path().join("m.ko.xz");
        let mut out = Vec::new();
        lzma_rs::xz_compress(&mut &elf[..], &mut out).unwrap();
        fs::write(&xz, out).unwrap();
        assert_eq!(read_module(&xz).unwrap(), elf);
        fs::write(dir.path().join("bad.ko"), b"text").unwrap();
        assert!(read_module(&dir.path().join("bad.ko")).is_err());
    }
}
