# Sourced by demo.sh and replace-demo.sh: start a real control plane (`test-vm control-plane`:
# etcd, kube-apiserver, kube-controller-manager on 127.0.0.1) in the background and wait until
# it is ready, at most 120 s. Usage: . scripts/control-plane.sh TEST_VM BIN_DIR DIR [LOG]
# Sets cp_pid and cp_ready (its ready file, JSON) and defines `cp_field NAME`. The caller's
# EXIT trap stops it (`kill "$cp_pid"`): set the trap before sourcing, so that an interrupted
# start stops it too. Its output goes to LOG when given, else to the terminal.
cp_dir=$3
cp_ready=$cp_dir.json
rm -rf "$cp_dir" "$cp_ready"
if [[ -n "${4:-}" ]]; then
	"$1" control-plane --bin-dir "$2" --dir "$cp_dir" --ready-file "$cp_ready" >"$4" 2>&1 &
else
	"$1" control-plane --bin-dir "$2" --dir "$cp_dir" --ready-file "$cp_ready" &
fi
cp_pid=$!
for _ in $(seq 240); do
	[[ -f "$cp_ready" ]] && break
	if ! kill -0 "$cp_pid" 2>/dev/null; then
		[[ -z "${4:-}" ]] || cat "$4" >&2
		echo "the control plane did not start (see above)" >&2
		exit 1
	fi
	sleep 0.5
done
[[ -f "$cp_ready" ]] || { echo "the control plane was not ready after 120 s" >&2; exit 1; }
cp_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$cp_ready" "$1"; }
