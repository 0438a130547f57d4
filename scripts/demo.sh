#!/usr/bin/env bash
# `make demo`: the whole mission end to end, offline, with real programs throughout.
#   1. build the release mirror: Debian's containerd 1.6 as a cri-containerd-cni bundle, and
#      Kubernetes (kubelet, kubeadm, kubectl, the control plane), etcd, containerd 2.x, runc, the
#      CNI plugins and crictl built from their Go modules, each laid out like its upstream
#      release; serve it from a real HTTP server on 127.0.0.1;
#   2. `nodeforge check`, then `nodeforge image --mirror` against it (the GitHub / dl.k8s.io
#      code path): the build's artifacts plus a bootable disk on a debootstrap'd Debian base;
#   3. start a real control plane on 127.0.0.1 (etcd, kube-apiserver, kube-controller-manager,
#      bootstrapped by kubeadm's own phases) and mint a join seed with `nodeforge seed`;
#   4. `test-vm boot`: QEMU boots exactly what was built, cloud-init runs the real `kubeadm
#      join`, the guest agent proves stage by stage that the node runs a pod on containerd,
#      and the join stage sees the Node Ready and a pod bound to it Succeeded;
#   5. the node's row from the real API server, as `kubectl get node -o wide` prints it, and
#      the verdict.
# NODEFORGE_DEMO_DIR (default out/demo) holds everything; `make test` runs this script too.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${NODEFORGE_DEMO_DIR:-out/demo}
mkdir -p "$out"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
start=$SECONDS

say "installing what is missing"
bash scripts/install-deps.sh

say "building nodeforge, test-vm and the guest agent"
# The dev profile (dependencies optimised, see Cargo.toml): the build `make test` makes too.
cargo build --locked -q --workspace
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
nf=$bin/nodeforge
tvm=$bin/test-vm

say "building the release mirror (Debian's containerd bundle; Kubernetes, etcd, containerd 2.x, runc, CNI plugins, crictl from Go modules)"
bash fixtures/standin/build-standin.sh "$out/mirror"
# shellcheck source=/dev/null
. "$out/mirror/upstream.env"

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

say "a real control plane on 127.0.0.1 (guests reach it as 10.0.2.2)"
# Stop the control plane and the VM however this script ends (and the mirror server, which
# serve-mirror.sh's own trap stopped until now), keeping the script's own exit status (the
# control plane exits 130 on SIGTERM).
stop_all() {
	local rc=$?
	[[ -z "${boot_pid:-}" ]] || kill "$boot_pid" 2>/dev/null || true
	kill ${cp_pid:+"$cp_pid"} "$mirror_server_pid" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -f "$portfile"
	exit "$rc"
}
trap stop_all EXIT
. scripts/control-plane.sh "$tvm" "$UPSTREAM_BIN_DIR" "$out/control-plane"
endpoint=$(cp_field endpoint)
kubeconfig=$(cp_field admin_kubeconfig)

say "nodeforge seed: a node that joins the cluster on first boot"
rm -rf "$out/seed"
"$nf" seed --profile "$out/mirror/standin.toml" --node demo-node --out "$out/seed" \
	--join-endpoint "$endpoint" --token-file "$(cp_field token_file)" --ca-cert-hash "$(cp_field ca_cert_hash)"

say "test-vm boot: the built disk under QEMU, checked stage by stage, then the join"
# --keep-running: the node stays up after its verdict, so the API server shows it live below.
rm -f "$out/node/boot.json"
"$tvm" boot --accel auto --kernel "$out/node/vmlinuz" --initrd "$out/node/initrd.img" \
	--disk "$out/node/disk.qcow2" --seed "$out/seed/seed.img" --kubeconfig "$kubeconfig" --keep-running \
	--json "$out/node/boot.json" --junit "$out/node/boot.junit.xml" --serial-log "$out/node/serial.log" &
boot_pid=$!
while [[ ! -f "$out/node/boot.json" ]] && kill -0 "$boot_pid" 2>/dev/null; do sleep 1; done
python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["verdict"] != "pass")' "$out/node/boot.json" 2>/dev/null ||
	{ wait "$boot_pid" || true; echo "demo: the node failed (report: $out/node/boot.json)" >&2; exit 1; }

say "kubectl get node -o wide (the real API server, the node still running)"
"$UPSTREAM_BIN_DIR/kubectl" --kubeconfig "$kubeconfig" get node demo-node -o wide
kill "$boot_pid"
wait "$boot_pid" || { echo "demo: test-vm did not stop cleanly" >&2; exit 1; }
boot_pid=

printf '\nartifacts in %s: %s\n' "$out/node" "$(cd "$out/node" && echo *)"
printf 'verdict: the node came up on containerd, ran a pod, and joined the cluster as containerd://%s (%s s; details: %s)\n' \
	"$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["cri_version"]["runtime_version"].lstrip("v").split("~")[0])' "$out/node/boot.json")" \
	"$((SECONDS - start))" "$out/node/boot.json"
