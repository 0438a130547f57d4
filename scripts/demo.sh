#!/usr/bin/env bash
# `make demo`: the main job end to end, offline.
#   1. build the stand-in containerd release from Debian packages, laid out like GitHub's;
#   2. serve it from a real HTTP server on 127.0.0.1;
#   3. `nodeforge check` and `nodeforge build --mirror` against it (the GitHub code path);
#   4. verify and show what was built.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${NODEFORGE_DEMO_DIR:-out/demo}
mkdir -p "$out"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "installing what is missing"
bash scripts/install-deps.sh

say "building nodeforge"
cargo build --release --locked -q -p nodeforge
nf=$PWD/target/release/nodeforge

say "building the offline stand-in release mirror"
bash fixtures/standin/build-standin.sh "$out/mirror"

say "serving it on 127.0.0.1"
. scripts/serve-mirror.sh "$out/mirror"
echo "mirror: $mirror"

say "nodeforge check"
"$nf" check --profile "$out/mirror/standin.toml"

say "nodeforge build --mirror $mirror"
NODEFORGE_CACHE_DIR="$out/cache" "$nf" build --profile "$out/mirror/standin.toml" --mirror "$mirror" --out "$out/node"

say "verifying the artifacts"
(cd "$out/node" && sha256sum -c SHA256SUMS)
blkid -p "$out/node/seed.img" || true

say "the overlay (unpack at / with: tar --no-overwrite-dir -C / -xzf $out/node/overlay.tar.gz)"
tar -tzvf "$out/node/overlay.tar.gz" | grep -v '/$'

say "its containerd config"
tar -xzOf "$out/node/overlay.tar.gz" etc/containerd/config.toml

printf '\nartifacts in %s: %s\n' "$out/node" "$(cd "$out/node" && echo *)"
