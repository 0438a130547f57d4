#!/usr/bin/env bash
# Benchmark: warm-cache `nodeforge build` against the stand-in release, side by side with the
# obvious shell pipeline doing the same work with GNU tools on the same inputs:
#   verify the bundle (sha256sum), unpack the members a node needs (tar -xzf), add the same
#   generated files, then write overlay.tar.gz (GNU tar | gzip -6) and overlay.cpio.gz
#   (GNU cpio | gzip -6) concurrently (two cores, as nodeforge uses), and SHA256SUMS.
# Reports wall time and peak RSS of each, and the ratio. Not a test: run it and read it.
# Usage: scripts/bench-build.sh [ROUNDS]   (default 3; the best round of each is reported)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
work=${NODEFORGE_BENCH_DIR:-out/bench}
rm -rf "$work"; mkdir -p "$work"; work=$(cd "$work" && pwd)
command -v /usr/bin/time >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }

cargo build --release --locked -q -p nodeforge
nf=$PWD/target/release/nodeforge
bash fixtures/standin/build-standin.sh "$work/mirror" >/dev/null
profile=$work/mirror/standin.toml
# shellcheck source=/dev/null
. "$work/mirror/standin.env"
bundle=$work/mirror/$STANDIN_TARBALL

# Served over loopback HTTP: nodeforge has one download path, the one GitHub uses.
. scripts/serve-mirror.sh "$work/mirror"
export NODEFORGE_CACHE_DIR=$work/cache
"$nf" fetch --profile "$profile" --mirror "$mirror" >/dev/null   # warm the cache

# The generated files, rendered once, stand in for "the same generated files" on the
# pipeline side (the pipeline has no renderer; it copies them).
"$nf" render --profile "$profile" --out "$work/rendered" >/dev/null
mkdir -p "$work/rendered/var/lib/nodeforge/images"
cp "$work"/mirror/images/*.tar "$work/rendered/var/lib/nodeforge/images/"

pipeline() {
	local out=$1
	local stage=$out.stage
	rm -rf "$out" "$stage"; mkdir -p "$out" "$stage"
	(cd "$(dirname "$bundle")" && sha256sum --quiet -c "$(basename "$bundle").sha256sum")
	tar -xzf "$bundle" -C "$stage" usr/local/bin usr/local/sbin opt/cni/bin \
		--exclude usr/local/bin/critest --exclude usr/local/bin/containerd-stress
	cp -a "$work/rendered/." "$stage/"
	(cd "$stage" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@315532800 -cf - . | gzip -6 -n >"$out/overlay.tar.gz") &
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -6 -n >"$out/overlay.cpio.gz") &
	wait
	(cd "$out" && sha256sum overlay.tar.gz overlay.cpio.gz >SHA256SUMS)
	rm -rf "$stage"
}
export -f pipeline; export bundle work

best() { sort -n | head -1; }
nf_t=(); nf_m=(); sh_t=(); sh_m=()
for i in $(seq "$rounds"); do
	rm -rf "$work/nf-out"
	/usr/bin/time -f '%e %M' -o "$work/t" "$nf" build --profile "$profile" --mirror "$mirror" --out "$work/nf-out" >/dev/null
	read -r t m <"$work/t"; nf_t+=("$t"); nf_m+=("$m")
	/usr/bin/time -f '%e %M' -o "$work/t" bash -c 'set -euo pipefail; pipeline "$work/sh-out"'
	read -r t m <"$work/t"; sh_t+=("$t"); sh_m+=("$m")
	echo "round $i: nodeforge ${nf_t[-1]} s ${nf_m[-1]} KiB | pipeline ${sh_t[-1]} s ${sh_m[-1]} KiB (largest single process)"
done
nt=$(printf '%s\n' "${nf_t[@]}" | best); st=$(printf '%s\n' "${sh_t[@]}" | best)
nm=$(printf '%s\n' "${nf_m[@]}" | sort -n | tail -1); sm=$(printf '%s\n' "${sh_m[@]}" | sort -n | tail -1)
size=$(stat -c %s "$bundle")
echo
echo "input: $(basename "$bundle") ($size bytes, $(tar -tzvf "$bundle" | awk '{s+=$3} END {print s}') bytes unpacked)"
echo "nodeforge build (warm cache): best ${nt} s, peak RSS ${nm} KiB"
echo "shell pipeline (tar/gzip/cpio/sha256sum): best ${st} s, peak RSS of its largest process ${sm} KiB"
awk -v a="$nt" -v b="$st" 'BEGIN { printf "ratio nodeforge/pipeline: %.2f\n", a / b }'
