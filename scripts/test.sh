#!/usr/bin/env bash
# `make test`: install what is missing, then every check and test, failing on the first.
#
# After the static checks, everything is compiled once (`cargo test --no-run` builds the
# libraries, binaries, examples and tests in one go), then two lanes side by side take the
# steps from one queue, each the next one left when it is done: make demo, the replace demo,
# the test binaries that boot images or run a control plane (longest first, as measured), then
# every other test binary, then the doc tests. A TCG guest keeps about 1.3 of the 2 cores busy
# (much of a boot is waiting on timers and the join): one after another the steps left a third
# of the machine idle; side by side each runs slower (a boot ~1.5x) but the whole is sooner,
# and a shared queue keeps the two lanes ending together on a faster or slower machine, which
# fixed lanes did not. Each lane runs every step it takes even after one failed (as
# `cargo test --no-fail-fast` does) and writes its own log, printed whole at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - start ))" >&2; }

step "installing test dependencies"
bash scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "compiling every library, binary, example and test once (cargo test --no-run)"
logs=$(mktemp -d "${TMPDIR:-/tmp}/nodeforge-test.XXXXXX")
trap 'rm -rf "$logs"' EXIT
cargo test --workspace --locked --no-run --message-format=json-render-diagnostics >"$logs/artifacts.json"
# One line per test executable: target name, package directory, executable.
jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null)
	| [.target.name, (.manifest_path | sub("/Cargo.toml$"; "")), .executable] | @tsv' \
	"$logs/artifacts.json" >"$logs/tests.tsv"
[[ -s "$logs/tests.tsv" ]] || { echo "test.sh: cargo listed no test executables" >&2; exit 1; }

# The examples `make docs` runs, as just built (`cargo run -p nodeforge` would unify features
# for one package rather than the workspace, and compile much of it again).
example() {
	local exe
	exe=$(jq -r --arg n "$1" 'select(.reason == "compiler-artifact" and .target.kind[0] == "example"
		and .target.name == $n) | .executable' "$logs/artifacts.json" | tail -n 1)
	[[ -x "$exe" ]] || { echo "test.sh: cargo built no example $1" >&2; exit 1; }
	"$exe"
}

step "CLI reference is current"
example cli-reference | diff -u docs/cli.md - || { echo "docs/cli.md is stale: run 'make docs'" >&2; exit 1; }

step "Supported matrix is current"
example matrix | diff -u docs/matrix.md - || { echo "docs/matrix.md is stale: run 'make docs'" >&2; exit 1; }

step "cargo build --workspace (the end-to-end tests run nodeforge, test-vm and the guest agent)"
cargo build --workspace --locked

# The long steps, longest first (README, "CI time"): taken first, they leave the short ones
# to fill the end of both lanes.
long_tests=(node control_plane image site_overlay cli)

# run_test DIR EXE: one test binary, from its package's directory as cargo runs it.
run_test() {
	(cd "$1" && "$2")
}

# binaries NAMES [1]: a queue line ("test binary NAME (PACKAGE DIR)<TAB>run_test<TAB>DIR<TAB>EXE")
# for each tests.tsv line whose name is one of the space-separated NAMES (with 1: is not).
binaries() {
	awk -F'\t' -v names=" $1 " -v skip="${2:-0}" '(index(names, " " $1 " ") == 0) == skip {
		n = split($2, p, "/"); printf "test binary %s (%s)\trun_test\t%s\t%s\n", $1, p[n], $2, $3 }' "$logs/tests.tsv"
}

# The queue: one step a line, "WHAT<TAB>COMMAND ARGS..." (tab-separated words), in the order
# they are taken.
queue=$logs/queue
{
	printf "%s\t%s\n" "make demo (the README's main command: the bundle node built, booted, joined to a real control plane)" \
		"bash	scripts/demo.sh"
	printf "%s\t%s\n" "the replace demo (scripts/replace-demo.sh: a node drained, reprovisioned on containerd 2.x, uncordoned)" \
		"bash	scripts/replace-demo.sh"
	for t in "${long_tests[@]}"; do binaries "$t"; done
	binaries "${long_tests[*]}" 1
	printf "%s\t%s\n" "doc tests" "cargo	test	--workspace	--locked	--doc"
} >"$queue"
echo 0 >"$logs/queue.next"

# take: the next step's line, or nothing when the queue is empty. Both lanes call it.
take() {
	local n
	{
		flock 9
		n=$(($(cat "$logs/queue.next") + 1))
		echo "$n" >"$logs/queue.next"
	} 9>"$logs/queue.lock"
	sed -n "${n}p" "$queue"
}

# lane NAME: take and run steps until the queue is empty, logging each; returns non-zero if
# any step it ran failed.
lane() {
	local name=$1 failed=() t0 line what cmd
	# Progress goes to the lane's log and, live, to the terminal (fd 3).
	mark() {
		local line
		line=$(printf '==> [%s] %s (%ss)' "$name" "$*" "$(( $(date +%s) - start ))")
		printf '%s\n' "$line"
		printf '%s\n' "$line" >&3
	}
	while line=$(take) && [[ -n "$line" ]]; do
		IFS=$'\t' read -r -a cmd <<<"$line"
		what=${cmd[0]}
		cmd=("${cmd[@]:1}")
		mark "$what"
		t0=$(date +%s)
		if "${cmd[@]}" </dev/null; then
			mark "$what: ok in $(( $(date +%s) - t0 ))s"
		else
			mark "$what: FAILED after $(( $(date +%s) - t0 ))s"
			failed+=("$what")
		fi
	done
	if [[ ${#failed[@]} -gt 0 ]]; then
		printf '==> [%s] failed: %s\n' "$name" "${failed[*]}"
		return 1
	fi
}

step "$(wc -l <"$queue") steps in two lanes side by side, each taking the next from one queue (the demos and the boots first)"
exec 3>&2
lane 1 >"$logs/lane1.log" 2>&1 &
lane1_pid=$!
lane 2 >"$logs/lane2.log" 2>&1 &
lane2_pid=$!
rc=0
wait "$lane1_pid" || rc=1
wait "$lane2_pid" || rc=1
for l in 1 2; do
	step "lane $l's log"
	cat "$logs/lane$l.log" >&2
done
grep -h '^==> \[.*\] failed: ' "$logs/lane1.log" "$logs/lane2.log" >&2 || true
[[ $rc -eq 0 ]] || { step "FAILED in $(( $(date +%s) - start ))s"; exit 1; }

step "done in $(( $(date +%s) - start ))s"
