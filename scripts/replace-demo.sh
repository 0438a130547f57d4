#!/usr/bin/env bash
# The seed's migration done by replacing the node, for real, against a real control plane:
#   1. a node `worker` boots the containerd 1.6 image (the bundle) and joins; a workload pod
#      bound to it runs;
#   2. `nodeforge replace` refuses what it must refuse, leaving the node cordoned: a
#      PodDisruptionBudget that blocks the eviction (exit 10), and an unmanaged pod without
#      --force (exit 11);
#   3. `nodeforge replace --force` drains it through the Eviction API and runs the
#      reprovision step: the same machine, the same disk, booted again with a seed that
#      carries a new instance-id and the containerd 2.x image's overlay, so first boot runs
#      again, resets the old kubelet and joins; replace waits until the Node is back Ready
#      from the new boot as containerd://2.x, uncordons it and prints before and after;
#   4. a new pod bound to the node runs to Succeeded, its image pulled (imagePullPolicy: Always)
#      from a read-only registry on the host (fixtures/registry/serve-registry.py), which the
#      node knows only from a site overlay of the 2.x build: certs.d/registry.nodeforge.test/
#      hosts.toml pointing at 10.0.2.2 (the host, as QEMU's user network shows it). The
#      registry's request log must show the manifest and every layer served.
# Everything goes under NODEFORGE_REPLACE_DIR (default out/replace); the mirror, base and
# image builds are the cached ones `make demo` uses. `make test` runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${NODEFORGE_REPLACE_DIR:-out/replace}
mkdir -p "$out"
out=$(realpath "$out")
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
start=$SECONDS

say "building nodeforge and test-vm (the dev profile make test uses)"
cargo build --locked -q --workspace
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
nf=$bin/nodeforge
tvm=$bin/test-vm

say "the release mirror and the base (cached)"
bash fixtures/standin/build-standin.sh "$out/mirror" >/dev/null
# shellcheck source=/dev/null
. "$out/mirror/upstream.env"
kubectl=$UPSTREAM_BIN_DIR/kubectl
bash fixtures/base/build-base.sh "$out/base" >/dev/null
. scripts/serve-mirror.sh "$out/mirror"

say "a registry on 127.0.0.1 (10.0.2.2 from the guest) serving a busybox image no node holds"
# Built with another timestamp, so no blob matches the preloaded test image's: a layer the
# node already has would not be fetched, and the request log would prove nothing.
mkdir -p "$out/registry"
NODEFORGE_FIXTURE_MTIME=1704067200 bash fixtures/images/build-oci-image.sh --ref registry.nodeforge.test/busybox:1 \
	--out "$out/registry/busybox.tar" --entrypoint /bin/sh --cmd "-c 'echo from-the-registry'" >/dev/null
blobs() { tar -tf "$1" | sed -n 's|^blobs/sha256/\(.\)|\1|p' | sort; }
shared=$(comm -12 <(blobs "$out/registry/busybox.tar") <(blobs "$out/mirror/images/test-busybox.tar"))
[[ -z "$shared" ]] || { echo "replace-demo: the registry's image shares blobs with the preloaded one: $shared" >&2; exit 1; }
# The registry checked on the host first: curl, skopeo and a throwaway containerd 2.x pull it.
bash fixtures/registry/check-registry.sh "$out/registry/busybox.tar" "$UPSTREAM_BIN_DIR"
rm -f "$out/registry/port" "$out/registry/requests.log"
python3 fixtures/registry/serve-registry.py --archive "$out/registry/busybox.tar" \
	--log "$out/registry/requests.log" --port-file "$out/registry/port" >/dev/null 2>"$out/registry/server.log" &
registry_pid=$!
trap 'kill "$registry_pid" "$mirror_server_pid" 2>/dev/null; rm -f "$portfile"' EXIT
for _ in $(seq 100); do [[ -s "$out/registry/port" ]] && break; sleep 0.1; done
[[ -s "$out/registry/port" ]] || { cat "$out/registry/server.log" >&2; echo "replace-demo: the registry did not start" >&2; exit 1; }
registry_port=$(cat "$out/registry/port")

say "the site overlay of the containerd $UPSTREAM_CONTAINERD_VERSION build: the registry's hosts.toml"
rm -rf "$out/site"
mkdir -p "$out/site/etc/containerd/certs.d/registry.nodeforge.test"
cat >"$out/site/etc/containerd/certs.d/registry.nodeforge.test/hosts.toml" <<HOSTS
# The demo's registry on the host, as QEMU's user network shows the host to the guest.
server = "http://10.0.2.2:$registry_port"

[host."http://10.0.2.2:$registry_port"]
  capabilities = ["pull", "resolve"]
HOSTS
# standin-components.toml with the overlay; its image archives named by absolute path, as
# they sit beside the original.
site_profile=$out/standin-components-site.toml
sed "s|^source = \"|source = \"$out/mirror/|" "$out/mirror/standin-components.toml" >"$site_profile"
printf '\n[[overlay]]\npath = "site"\n' >>"$site_profile"

say "the containerd 1.6 image, and the containerd $UPSTREAM_CONTAINERD_VERSION build whose overlay replaces it"
NODEFORGE_CACHE_DIR="$out/cache" "$nf" image --profile "$out/mirror/standin.toml" --mirror "$mirror" \
	--base "$out/base/rootfs.tar" --out "$out/image-1.6" >/dev/null
NODEFORGE_CACHE_DIR="$out/cache" "$nf" build --profile "$site_profile" --mirror "$mirror" \
	--out "$out/build-2x" >/dev/null

say "a real control plane on 127.0.0.1"
rm -f "$out/worker.qcow2" "$out"/boot-*.json "$out"/*.pid
# The trap keeps the script's own exit status (the control plane exits 130 on SIGTERM).
stop_all() {
	local rc=$? f
	for f in "$out"/boot-*.pid; do [[ -f "$f" ]] && { kill "$(cat "$f")" 2>/dev/null || true; }; done
	kill ${cp_pid:+"$cp_pid"} "$registry_pid" "$mirror_server_pid" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -f "$portfile"
	exit "$rc"
}
trap stop_all EXIT
. scripts/control-plane.sh "$tvm" "$UPSTREAM_BIN_DIR" "$out/control-plane" "$out/control-plane.log"
kc=$(cp_field admin_kubeconfig)
join=(--join-endpoint "$(cp_field endpoint)" --token-file "$(cp_field token_file)" --ca-cert-hash "$(cp_field ca_cert_hash)")
k() { "$kubectl" --kubeconfig "$kc" "$@"; }

# boot NAME SEED MANIFEST [test-vm flags...]: the node `worker` on the one disk layer, kept
# running after its stages pass; returns once its report is written.
boot() {
	local name=$1 seed=$2 manifest=$3
	shift 3
	"$tvm" boot --accel tcg --kernel "$out/image-1.6/vmlinuz" --initrd "$out/image-1.6/initrd.img" \
		--disk "$out/image-1.6/disk.qcow2" --disk-layer "$out/worker.qcow2" --manifest "$manifest" \
		--seed "$seed" --keep-running --json "$out/boot-$name.json" --serial-log "$out/serial-$name.log" \
		--timeout 1200 "$@" >"$out/boot-$name.log" 2>&1 &
	echo $! >"$out/boot-$name.pid"
	for _ in $(seq 1200); do
		[[ -f "$out/boot-$name.json" ]] && break
		kill -0 "$(cat "$out/boot-$name.pid")" 2>/dev/null || break
		sleep 1
	done
	if python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["verdict"] != "pass")' "$out/boot-$name.json" 2>/dev/null; then
		tail -n 14 "$out/boot-$name.log"
	else
		# The whole log: the stage summary, the failed stage's message and the serial tail.
		wait "$(cat "$out/boot-$name.pid")" 2>/dev/null || true
		cat "$out/boot-$name.log" >&2
		echo "replace-demo: boot $name failed (log: $out/boot-$name.log, serial: $out/serial-$name.log)" >&2
		exit 1
	fi
}

say "worker: the containerd 1.6 node boots and joins"
"$nf" seed --profile "$out/mirror/standin.toml" --node worker --out "$out/seed-1" "${join[@]}" >/dev/null
boot 1 "$out/seed-1/seed.img" "$out/image-1.6/manifest.json" --kubeconfig "$kc"

say "a workload pod bound to worker"
k apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: workload, namespace: default, labels: {app: workload}}
spec:
  nodeName: worker
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 5
  tolerations: [{operator: Exists}]
  containers:
  - name: app
    image: nodeforge.test/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
YAML
k wait --for=condition=Ready pod/workload --timeout=180s
k get node -o wide

say "nodeforge replace must refuse: a PodDisruptionBudget blocks the eviction (exit 10)"
k apply -f - <<'YAML'
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: workload-budget, namespace: default}
spec: {minAvailable: 1, selector: {matchLabels: {app: workload}}}
YAML
rc=0
"$nf" replace --kubeconfig "$kc" --node worker --expect-runtime "containerd://$UPSTREAM_CONTAINERD_VERSION" \
	--force --drain-timeout 10s --reprovision-cmd false || rc=$?
[[ $rc -eq 10 ]] || { echo "replace-demo: expected exit 10, got $rc" >&2; exit 1; }
[[ "$(k get node worker -o 'jsonpath={.spec.unschedulable}')" == true ]] ||
	{ echo "replace-demo: the node is not left cordoned" >&2; exit 1; }
k delete pdb workload-budget

say "nodeforge replace must refuse: an unmanaged pod without --force (exit 11)"
rc=0
"$nf" replace --kubeconfig "$kc" --node worker --expect-runtime "containerd://$UPSTREAM_CONTAINERD_VERSION" \
	--reprovision-cmd false || rc=$?
[[ $rc -eq 11 ]] || { echo "replace-demo: expected exit 11, got $rc" >&2; exit 1; }
[[ "$(k get pod workload -o 'jsonpath={.status.phase}')" == Running ]] ||
	{ echo "replace-demo: a refused drain evicted the workload" >&2; exit 1; }

say "worker's next life: a seed with a new instance-id carrying the containerd $UPSTREAM_CONTAINERD_VERSION overlay"
"$nf" seed --profile "$site_profile" --node worker --instance-id worker-r2 \
	--overlay "$out/build-2x/overlay.tar.gz" --out "$out/seed-2" "${join[@]}" >/dev/null
cat >"$out/reprovision.sh" <<EOF
#!/usr/bin/env bash
# The reprovision step: power the machine off, boot it again on the same disk with the new seed.
set -euo pipefail
echo "reprovision: stopping \$NODEFORGE_NODE (test-vm pid \$(cat '$out/boot-1.pid'))"
kill "\$(cat '$out/boot-1.pid')"; while kill -0 "\$(cat '$out/boot-1.pid')" 2>/dev/null; do sleep 0.2; done
rm -f '$out/boot-1.pid'
echo "reprovision: booting \$NODEFORGE_NODE on the same disk with seed-2 (first boot, new instance-id)"
'$tvm' boot --accel tcg --kernel '$out/image-1.6/vmlinuz' --initrd '$out/image-1.6/initrd.img' \\
	--disk '$out/image-1.6/disk.qcow2' --disk-layer '$out/worker.qcow2' --manifest '$out/build-2x/manifest.json' \\
	--seed '$out/seed-2/seed.img' --keep-running --json '$out/boot-2.json' --serial-log '$out/serial-2.log' \\
	--timeout 1800 --stage-timeout boot=900 --stage-timeout cloud-init=900 >'$out/boot-2.log' 2>&1 &
echo \$! >'$out/boot-2.pid'
# Return once the machine is up: test-vm's guest agent has checked the runtime (its probe pod
# pauses the kubelet for a few seconds, which is no state to hand a node over in).
while [ ! -f '$out/boot-2.json' ]; do
	kill -0 "\$(cat '$out/boot-2.pid')" 2>/dev/null || { cat '$out/boot-2.log' >&2; echo "reprovision: the boot failed" >&2; exit 1; }
	sleep 1
done
python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["verdict"] != "pass")' '$out/boot-2.json' ||
	{ sleep 1; cat '$out/boot-2.log' >&2; exit 1; }
EOF
chmod +x "$out/reprovision.sh"

say "nodeforge replace --force: drain, reprovision, wait, uncordon"
"$nf" replace --kubeconfig "$kc" --node worker --expect-runtime "containerd://$UPSTREAM_CONTAINERD_VERSION" \
	--force --timeout 20m --reprovision-cmd "$out/reprovision.sh" --json >"$out/replace.json"
python3 - "$out/replace.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
head = ["", "NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
rows = [head, ["before"] + r["before"]["row"], ["after"] + r["after"]["row"]]
w = [max(len(row[i]) for row in rows) + 3 for i in range(len(head))]
for row in rows:
    print("".join(c.ljust(w[i]) for i, c in enumerate(row)).rstrip())
print(f"drained: {', '.join(d['namespace'] + '/' + d['name'] + ' ' + d['verdict'] for d in r['drained'])}; "
      f"total {r['total_ms'] / 1000:.0f} s (back Ready {r['wait_ms'] / 1000:.0f} s after the reprovision step)")
PY

say "the second boot is the containerd $UPSTREAM_CONTAINERD_VERSION node its build describes"
# test-vm checked boot 2 against build-2x's manifest (runtime, cgroupfs, sandbox image); on
# top of that: the pinned crictl ran, the pod got an address from the 2.x profile's subnet,
# and the API server has the node on the new runtime with the built kubelet.
python3 - "$out/boot-2.json" "$UPSTREAM_CONTAINERD_VERSION" <<'PY'
import ipaddress, json, sys
r, version = json.load(open(sys.argv[1])), sys.argv[2]
cri = next(s for s in r["stages"] if s["name"] == "cri")["detail"]
problems = [
    f"{what}: {got!r}, expected {want!r}"
    for what, got, want in [
        ("CRI runtime version", r["cri_version"]["runtime_version"], f"v{version}"),
        ("crictl", cri.get("crictl", {}).get("path"), "/usr/local/bin/crictl"),
        ("pod IP in 10.244.7.0/24", ipaddress.ip_address(r["pod_ip"]) in ipaddress.ip_network("10.244.7.0/24"), True),
    ]
    if got != want
]
sys.exit("replace-demo: boot 2: " + "; ".join(problems) if problems else 0)
PY
[[ "$(k get node worker -o 'jsonpath={.status.nodeInfo.containerRuntimeVersion} {.status.nodeInfo.kubeletVersion}')" == \
	"containerd://$UPSTREAM_CONTAINERD_VERSION v$UPSTREAM_KUBERNETES_VERSION" ]] ||
	{ echo "replace-demo: worker is not on containerd $UPSTREAM_CONTAINERD_VERSION with kubelet v$UPSTREAM_KUBERNETES_VERSION" >&2; exit 1; }

say "a new pod on the replaced node pulls its image from the registry and runs to Succeeded"
k apply -f - <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: after-replace, namespace: default}
spec:
  nodeName: worker
  restartPolicy: Never
  automountServiceAccountToken: false
  containers:
  - name: hello
    image: registry.nodeforge.test/busybox:1
    imagePullPolicy: Always
    command: ["/bin/sh", "-c", "echo replaced"]
YAML
k wait --for=jsonpath='{.status.phase}'=Succeeded pod/after-replace --timeout=180s ||
	{ k describe pod after-replace; k get events -A; cat "$out/registry/requests.log"; tail -n 30 "$out/serial-2.log"; exit 1; }
# Evidence from outside the guest: the registry served the manifest and every layer.
python3 - "$out/registry/busybox.tar" "$out/registry/requests.log" <<'PY'
import json, re, sys, tarfile
archive, log = sys.argv[1], sys.argv[2]
t = tarfile.open(archive)
digest = json.load(t.extractfile("index.json"))["manifests"][0]["digest"]
manifest = json.load(t.extractfile("blobs/sha256/" + digest.split(":", 1)[1]))
# containerd adds ?ns=<registry> when it pulls through a hosts.toml entry: compare paths only.
served = {re.sub(r"\?\S*", "", line) for line in open(log).read().splitlines()}
wanted = {"GET /v2/busybox/manifests/1 200", f"GET /v2/busybox/manifests/{digest} 200"}
missing = [] if wanted & served else [f"manifest {digest}"]
missing += [f"layer {l['digest']}" for l in manifest["layers"] if f"GET /v2/busybox/blobs/{l['digest']} 200" not in served]
if missing:
    sys.exit(f"replace-demo: the registry never served {', '.join(missing)} (log: {log})")
print(f"registry: served manifest {digest} and {len(manifest['layers'])} layer(s) to the node")
PY
k get node worker -o wide
printf '\nverdict: worker replaced: containerd 1.6 -> %s, drained, reprovisioned, Ready, uncordoned, running pods (%s s)\n' \
	"$(k get node worker -o 'jsonpath={.status.nodeInfo.containerRuntimeVersion}')" "$((SECONDS - start))"
