#!/usr/bin/env bash
# bench-boot.sh [RUNS [DIR...]]: how long the demo's node takes to its runtime verdict (TCG):
# QEMU start to the pod stage's pass, whichever order the stages ran in.
#
# Boots the node `make demo` built (DIR/node; DIR defaults to NODEFORGE_DEMO_DIR or
# out/demo) RUNS times (3), each with a fresh join seed against one real control plane, as
# the demo boots it but without the harness's join stage: the guest's own `kubeadm join` (in
# cloud-init's final stage) still runs and must succeed for the cloud-init stage to pass.
# Several DIRs (say, the node on two bases) are booted in turn, run by run, so they share the
# machine's conditions. Prints every run's per-stage seconds (from QEMU start) and the median
# of each column, per DIR. Run `make demo` first.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
dirs=("$@")
[[ ${#dirs[@]} -gt 0 ]] || dirs=("${NODEFORGE_DEMO_DIR:-out/demo}")
out=${dirs[0]}
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
bench=$out/bench
for d in "${dirs[@]}"; do
	for f in node/vmlinuz node/initrd.img node/disk.qcow2 mirror/upstream.env mirror/standin.toml; do
		[[ -e "$d/$f" ]] || { echo "bench-boot: no $d/$f (run make demo first)" >&2; exit 1; }
	done
done
# shellcheck source=/dev/null
. "$out/mirror/upstream.env"
rm -rf "$bench"
mkdir -p "$bench"

trap 'kill ${cp_pid:+"$cp_pid"} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
. scripts/control-plane.sh "$bin/test-vm" "$UPSTREAM_BIN_DIR" "$bench/control-plane" "$bench/control-plane.log"

for i in $(seq "$runs"); do
	for j in "${!dirs[@]}"; do
		d=${dirs[$j]}
		"$bin/nodeforge" seed --profile "$d/mirror/standin.toml" --node "bench-$j-$i" --out "$bench/seed-$j-$i" \
			--join-endpoint "$(cp_field endpoint)" --token-file "$(cp_field token_file)" \
			--ca-cert-hash "$(cp_field ca_cert_hash)" >/dev/null
		"$bin/test-vm" boot --accel tcg --kernel "$d/node/vmlinuz" --initrd "$d/node/initrd.img" \
			--disk "$d/node/disk.qcow2" --seed "$bench/seed-$j-$i/seed.img" --json "$bench/run-$j-$i.json" \
			--stage-timeout boot=600 --stage-timeout cloud-init=300 \
			--serial-log "$bench/serial-$j-$i.log" >"$bench/run-$j-$i.log" 2>&1 ||
			{ tail -n 30 "$bench/run-$j-$i.log" >&2; exit 1; }
	done
done

python3 - "$bench" "$runs" "${dirs[@]}" <<'EOF'
import json, statistics, sys
bench, runs, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for j, d in enumerate(dirs):
    rows = []
    for i in range(1, runs + 1):
        r = json.load(open(f"{bench}/run-{j}-{i}.json"))
        stages = {s["name"]: s["duration_ms"] / 1000 for s in r["stages"]}
        names = list(stages)
        # The runtime verdict: every stage up to and including the pod, in the order run.
        stages["runtime"] = sum(stages[n] for n in names[: names.index("pod") + 1])
        stages["all"] = sum(stages[n] for n in names)
        rows.append(stages)
    cols = list(rows[0])
    print(f"{d}/node (seconds from QEMU start; runtime = the stages up to the pod, all = every stage)")
    print("run     " + " ".join(f"{c:>14}" for c in cols))
    for i, row in enumerate(rows, 1):
        print(f"{i:<8}" + " ".join(f"{row[c]:>14.1f}" for c in cols))
    print("median  " + " ".join(f"{statistics.median(r[c] for r in rows):>14.1f}" for c in cols))
EOF
