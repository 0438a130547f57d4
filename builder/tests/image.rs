//! `nodeforge image` end to end: the stand-in release over HTTP, the debootstrap'd base from
//! fixtures/base, a site overlay with secrets made here, and the artifacts checked by their
//! consumers — e2fsck and debugfs for the disk, qemu-img for the qcow2, GNU cpio for the
//! initramfs — and booted for real in QEMU (TCG), the serial console proving that `/init`
//! switched into the node's root.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::base::base;
use common::http_server::TestServer;
use common::standin::standin;
use common::text;

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}\n{}", text(&o));
    o
}

/// The site's secrets, with the modes they must keep on the node: (path, mode, content).
const SECRETS: &[(&str, u32, &str)] = &[
    ("etc/nodeforge-site/registry-token", 0o600, "s3cr3t-token\n"),
    ("etc/nodeforge-site/client.key", 0o640, "-----BEGIN PRIVATE KEY-----\nnot a key\n"),
];

/// The stand-in profile with a site overlay of [`SECRETS`] (in a 0750 directory), written
/// under `tmp`; git keeps no 0600 files, so the overlay is made here.
fn site_profile(tmp: &Path) -> PathBuf {
    let site = tmp.join("image-site");
    let _ = fs::remove_dir_all(&site);
    fs::create_dir_all(site.join("etc/nodeforge-site")).unwrap();
    fs::set_permissions(site.join("etc/nodeforge-site"), fs::Permissions::from_mode(0o750)).unwrap();
    for (path, mode, content) in SECRETS {
        fs::write(site.join(path), content).unwrap();
        fs::set_permissions(site.join(path), fs::Permissions::from_mode(*mode)).unwrap();
    }
    // The image archives sit beside the original profile: name them by absolute path.
    let st = standin();
    let mut text = String::new();
    for line in fs::read_to_string(&st.profile).unwrap().lines() {
        match line.strip_prefix("source = \"") {
            Some(rel) => text.push_str(&format!("source = \"{}/{rel}\n", st.mirror.display())),
            None => text.push_str(&format!("{line}\n")),
        }
    }
    text.push_str(&format!("\n[[overlay]]\npath = \"{}\"\n", site.display()));
    let profile = tmp.join("image-site.toml");
    fs::write(&profile, text).unwrap();
    profile
}

/// One `nodeforge image` for every test in this file.
fn image() -> &'static Path {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let (st, b) = (standin(), base());
        let server = TestServer::start();
        server.serve_dir("", &st.mirror);
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let out = tmp.join("image-out");
        let _ = fs::remove_dir_all(&out);
        let started = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
            .args(["image", "--profile"])
            .arg(site_profile(tmp))
            .args(["--mirror", &server.base(), "--base"])
            .arg(&b.rootfs)
            .arg("--out")
            .arg(&out)
            .env("NODEFORGE_CACHE_DIR", tmp.join("image-cache"))
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("NODEFORGE_MIRROR")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        eprintln!("nodeforge image took {:.1} s", started.elapsed().as_secs_f64());
        out
    })
}

fn debugfs(disk: &Path, request: &str) -> String {
    let o = run(Command::new("debugfs").args(["-R", request]).arg(disk));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_disk_is_the_base_with_the_overlay_on_top() {
    let out = image();
    let mut names: Vec<String> =
        fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "disk.qcow2",
            "disk.raw",
            "initrd.img",
            "manifest.json",
            "overlay.cpio.gz",
            "overlay.tar.gz",
            "rootfs.cpio.gz",
            "seed.img",
            "vmlinuz"
        ]
    );
    run(Command::new("sha256sum").args(["-c", "--strict", "--quiet", "SHA256SUMS"]).current_dir(out));
    let sums = fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for a in ["disk.raw", "disk.qcow2", "vmlinuz", "initrd.img", "rootfs.cpio.gz"] {
        assert!(sums.contains(&format!("  {a}\n")), "{a} missing from SHA256SUMS:\n{sums}");
    }

    let disk = out.join("disk.raw");
    run(Command::new("e2fsck").arg("-fn").arg(&disk));
    let label = run(Command::new("blkid").args(["-o", "value", "-s", "LABEL"]).arg(&disk));
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "root");

    let stat = debugfs(&disk, "stat /usr/local/bin/containerd");
    assert!(stat.contains("Type: regular") && stat.contains("Mode:  0755"), "{stat}");
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");

    // The config on the disk is byte for byte the overlay's.
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(out.join("overlay.tar.gz")).unwrap()));
    let mut expected = String::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("etc/containerd/config.toml") {
            e.read_to_string(&mut expected).unwrap();
        }
    }
    assert!(!expected.is_empty());
    assert_eq!(debugfs(&disk, "cat /etc/containerd/config.toml"), expected);

    // The base is there: its init, and no containerd of its own.
    assert!(debugfs(&disk, "stat /sbin/init").contains("Type: symlink"));
    assert!(debugfs(&disk, "stat /usr/lib/systemd/systemd").contains("Type: regular"));
    let kmods = format!("ls /usr/lib/modules/{}", base().kernel_version);
    assert!(debugfs(&disk, &kmods).contains("modules.dep"));

    let info = run(Command::new("qemu-img").args(["info", "--output=json"]).arg(out.join("disk.qcow2")));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"].as_u64(), Some(fs::metadata(&disk).unwrap().len()));
}

#[test]
fn site_secrets_keep_their_modes_on_the_disk_and_in_the_netboot_tree() {
    let out = image();
    let disk = out.join("disk.raw");
    let stat = debugfs(&disk, "stat /etc/nodeforge-site");
    assert!(stat.contains("Type: directory") && stat.contains("Mode:  0750"), "{stat}");
    for (path, mode, content) in SECRETS {
        let stat = debugfs(&disk, &format!("stat /{path}"));
        assert!(stat.contains("Type: regular") && stat.contains(&format!("Mode:  {mode:04o}")), "{path}: {stat}");
        assert!(stat.contains("User:     0   Group:     0"), "{path}: {stat}");
        assert_eq!(debugfs(&disk, &format!("cat /{path}")), *content);
    }
    // GNU cpio's long listing of the netboot tree: mode string, links, uid, gid, ..., name.
    let cmd = format!("zcat '{}' | cpio -itv --quiet --numeric-uid-gid", out.join("rootfs.cpio.gz").display());
    let listing = String::from_utf8_lossy(&run(Command::new("sh").arg("-c").arg(cmd)).stdout).into_owned();
    for (path, mode) in [
        ("etc/nodeforge-site", "drwxr-x---"),
        ("etc/nodeforge-site/registry-token", "-rw-------"),
        ("etc/nodeforge-site/client.key", "-rw-r-----"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().last() == Some(path))
            .unwrap_or_else(|| panic!("{path} is not in rootfs.cpio.gz"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((f[0], f[2], f[3]), (mode, "0", "0"), "{line}");
    }
    // And the build's own archives, as GNU tar and cpio list them.
    let tar = run(Command::new("tar").arg("-tvzf").arg(out.join("overlay.tar.gz")));
    let tar = String::from_utf8_lossy(&tar.stdout).into_owned();
    for (path, mode) in
        [("etc/nodeforge-site/registry-token", "-rw-------"), ("etc/nodeforge-site/client.key", "-rw-r-----")]
    {
        let line = tar.lines().find(|l| l.ends_with(&format!(" {path}"))).unwrap_or_else(|| panic!("{path}: {tar}"));
        assert!(line.starts_with(&format!("{mode} root/root ")), "{line}");
    }
}

fn cpio_list(archive: &Path) -> Vec<String> {
    let o = run(Command::new("sh").arg("-c").arg(format!("zcat '{}' | cpio -t --quiet", archive.display())));
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn the_initrd_holds_init_busybox_and_modules_in_dependency_order() {
    let list = cpio_list(&image().join("initrd.img"));
    for must in ["init", "bin/busybox", "dev/console", "newroot"] {
        assert!(list.iter().any(|l| l == must), "{must} missing: {list:?}");
    }
    let modules: Vec<String> = list
        .iter()
        .filter_map(|l| l.strip_prefix("usr/lib/nodeforge-initramfs/modules/"))
        .map(|m| m.split_once('-').unwrap().1.trim_end_matches(".ko").to_owned())
        .collect();
    let pos = |m: &str| modules.iter().position(|x| x == m).unwrap_or_else(|| panic!("{m} missing: {modules:?}"));
    for (dep, module) in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_pci"),
        ("virtio", "virtio_blk"),
        ("crc16", "ext4"),
        ("mbcache", "ext4"),
        ("jbd2", "ext4"),
        ("crc32c_generic", "ext4"),
    ] {
        assert!(pos(dep) < pos(module), "{dep} must load before {module}: {modules:?}");
    }
}

/// Boot QEMU (TCG: KVM hangs on these machines, see vm-facts), wait for `marker` on the
/// serial console, kill it on timeout, and return the log. The limits are generous: the two
/// boots of this file run at once on two cores, and the netboot unpacks ~300 MB of cpio under
/// TCG; a failing initramfs prints FATAL or powers off, which ends the wait at once.
fn boot(name: &str, args: &[&str], marker: &str, timeout: Duration) -> String {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let log = tmp.join(format!("{name}.serial.log"));
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64 (apt-get install qemu-system-x86; scripts/install-deps.sh)");
    let started = Instant::now();
    let result = loop {
        let serial = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
        if serial.contains(marker) {
            break Ok(serial);
        }
        if serial.contains("nodeforge-initramfs: FATAL:") || child.try_wait().unwrap().is_some() {
            std::thread::sleep(Duration::from_millis(300)); // let the last lines arrive
            break Err(String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned());
        }
        if started.elapsed() > timeout {
            break Err(format!("{serial}\n[no {marker:?} within {timeout:?}]"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(serial) => {
            eprintln!("{name}: {marker} after {:.1} s wall", started.elapsed().as_secs_f64());
            serial
        }
        Err(serial) => {
            let tail: Vec<&str> = serial.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("{name} did not reach {marker}; serial log tail ({}):\n{}", log.display(), tail.join("\n"));
        }
    }
}

/// A harness-style agent archive: `/nodeforge/agent` and a unit, as GNU cpio writes them.
fn agent_cpio(dir: &Path) -> PathBuf {
    let tree = dir.join("agent-tree");
    fs::create_dir_all(tree.join("nodeforge/units/multi-user.target.wants")).unwrap();
    fs::write(tree.join("nodeforge/agent"), "#!/bin/sh\necho agent\n").unwrap();
    fs::write(tree.join("nodeforge/units/nodeforge-agent.service"), "[Service]\nExecStart=/run/nodeforge/agent\n")
        .unwrap();
    std::os::unix::fs::symlink(
        "../nodeforge-agent.service",
        tree.join("nodeforge/units/multi-user.target.wants/nodeforge-agent.service"),
    )
    .unwrap();
    // Compressed, as the harness appends it: an uncompressed archive placed right after a gzip
    // member whose length is not a multiple of 4 is misaligned for the kernel's unpacker.
    let out = dir.join("agent.cpio.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("find nodeforge | cpio -o -H newc --quiet | gzip -n > '{}'", out.display()))
        .current_dir(&tree));
    out
}

#[test]
fn the_disk_boots_and_init_switches_into_it_with_the_agent_hook() {
    let out = image();
    let tmp = tempfile::tempdir().unwrap();
    // Boot a copy-on-write overlay: the artifact itself must stay untouched.
    let cow = tmp.path().join("cow.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(out.join("disk.qcow2"))
        .arg(&cow));
    let initrd = tmp.path().join("initrd");
    let mut bytes = fs::read(out.join("initrd.img")).unwrap();
    bytes.extend(fs::read(agent_cpio(tmp.path())).unwrap());
    fs::write(&initrd, bytes).unwrap();
    // nodeforge.init replaces /sbin/init after switch_root; words after `--` are its arguments.
    // The probe checks the overlay is on the root and the agent hook filled /run. It prints its
    // marker in two halves: the kernel echoes its command line to the console, and the marker
    // must not appear there literally.
    let probe = "test -x /usr/local/bin/containerd && test -x /run/nodeforge/agent && \
                 test -L /run/systemd/system/multi-user.target.wants/nodeforge-agent.service && \
                 printf '%s-%s\\n' NODEFORGE-ROOT OK; /bin/busybox poweroff -f";
    let append = format!("console=ttyS0 root=LABEL=root rw panic=-1 nodeforge.init=/bin/sh -- -c \"{probe}\"");
    let drive = format!("file={},if=virtio", cow.display());
    let serial = boot(
        "disk-boot",
        &[
            "-m",
            "1024",
            "-kernel",
            out.join("vmlinuz").to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-drive",
            &drive,
            "-append",
            &append,
        ],
        "NODEFORGE-ROOT-OK",
        Duration::from_secs(240),
    );
    assert!(serial.contains("nodeforge-initramfs: agent hook installed into /run"), "{serial}");
    assert!(serial.contains("nodeforge-initramfs: switching root"), "{serial}");
}

#[test]
fn netboot_copies_the_tree_to_a_tmpfs_and_switches_into_it() {
    let out = image();
    let tmp = tempfile::tempdir().unwrap();
    // What the harness does: the tree, then the overlay, concatenated.
    let initrd = tmp.path().join("netboot");
    let mut bytes = fs::read(out.join("rootfs.cpio.gz")).unwrap();
    bytes.extend(fs::read(out.join("overlay.cpio.gz")).unwrap());
    fs::write(&initrd, bytes).unwrap();
    let probe = "test -x /usr/local/bin/containerd && test -f /etc/containerd/config.toml && \
                 printf '%s-%s\\n' NODEFORGE-NETBOOT OK; /bin/busybox poweroff -f";
    let append = format!("nodeforge.netboot=1 console=ttyS0 panic=-1 nodeforge.init=/bin/sh -- -c \"{probe}\"");
    boot(
        "netboot",
        &[
            // The initrd (~450 MB with the Kubernetes binaries) and the tree unpacked from it
            // both sit in RAM: with 2 GiB the kernel had 255 MiB left and found no root.
            "-m",
            "3072",
            "-kernel",
            out.join("vmlinuz").to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            &append,
        ],
        "NODEFORGE-NETBOOT-OK",
        Duration::from_secs(600),
    );
}

#[test]
fn a_missing_base_fails_before_anything_is_fetched() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_nodeforge"))
        .args(["image", "--profile", "/nonexistent.toml", "--base", "/nonexistent/rootfs.tar", "--out"])
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("build-base.sh"), "{}", text(&o));
    assert!(!tmp.path().join("out").exists());
}
