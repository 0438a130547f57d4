#!/usr/bin/env bash
# `make demo`: the whole mission end to end, offline.
#   1. build the stand-in containerd release from Debian packages, laid out like GitHub's;
#   2. serve it from a real HTTP server on 127.0.0.1;
#   3. `nodeforge check`, then `nodeforge image --mirror` against it (the GitHub code path):
#      the build's artifacts plus a bootable disk on a debootstrap'd Debian base;
#   4. `test-vm boot`: QEMU boots exactly what was built and the guest agent proves, stage by
#      stage, that the node runs a pod on containerd; the verdict ends the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${NODEFORGE_DEMO_DIR:-out/demo}
mkdir -p "$out"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "installing what is missing"
bash scripts/install-deps.sh

say "building nodeforge, test-vm and the guest agent"
cargo build --release --locked -q --workspace
nf=$PWD/target/release/nodeforge
tvm=$PWD/target/release/test-vm

say "building the offline stand-in release mirror"
bash fixtures/standin/build-standin.sh "$out/mirror"

say "serving it on 127.0.0.1"
. scripts/serve-mirror.sh "$out/mirror"
echo "mirror: $mirror"

say "nodeforge check"
"$nf" check --profile "$out/mirror/standin.toml"

say "building the test-node base root filesystem (debootstrap; cached by package versions)"
bash fixtures/base/build-base.sh "$out/base"

say "nodeforge image --mirror $mirror"
NODEFORGE_CACHE_DIR="$out/cache" "$nf" image --profile "$out/mirror/standin.toml" --mirror "$mirror" \
	--base "$out/base/rootfs.tar" --out "$out/node"

say "verifying the artifacts"
(cd "$out/node" && sha256sum -c SHA256SUMS)
blkid -p "$out/node/seed.img" || true

say "the overlay (unpack at / with: tar --no-overwrite-dir -C / -xzf $out/node/overlay.tar.gz)"
tar -tzvf "$out/node/overlay.tar.gz" | grep -v '/$'

say "its containerd config"
tar -xzOf "$out/node/overlay.tar.gz" etc/containerd/config.toml

say "test-vm boot: the built disk under QEMU, checked stage by stage"
"$tvm" boot --accel auto --kernel "$out/node/vmlinuz" --initrd "$out/node/initrd.img" \
	--disk "$out/node/disk.qcow2" --seed "$out/node/seed.img" \
	--json "$out/node/boot.json" --junit "$out/node/boot.junit.xml" --serial-log "$out/node/serial.log"

printf '\nartifacts in %s: %s\n' "$out/node" "$(cd "$out/node" && echo *)"
printf 'verdict: the node came up on containerd and ran a pod (details: %s)\n' "$out/node/boot.json"
