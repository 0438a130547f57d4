#!/usr/bin/env bash
# `make test`: install what is missing, then every check and test, failing on the first.
#
# After the static checks, everything is compiled once (`cargo test --no-run` builds the
# libraries, binaries, examples and tests in one go), then the work runs in two lanes side by
# side, each one step after another:
#   boots  make demo, then the test binaries that boot built images (node, image) and the
#          harness's fake-guest and control-plane tests
#   rest   the replace demo, then every other test binary, then the doc tests
# A TCG guest keeps about 1.3 of the 2 cores busy (much of a boot is waiting on timers and
# the join): one after another the steps left a third of the machine idle; side by side each
# runs slower (a boot ~1.5x) but the whole is sooner. Each lane runs every step even after one failed
# (as `cargo test --no-fail-fast` does) and writes its own log, printed whole at the end.
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

# The boots lane's test binaries: those that boot built images in QEMU (node, image), and
# enough of the harness's own (fake guests, a control plane) to even the lanes out (README,
# "CI time": 25.4 and 20.6 min side by side in the last measured run).
boot_tests=" node image boot fleet control_plane "

# run_test DIR EXE: one test binary, from its package's directory as cargo runs it.
run_test() {
	(cd "$1" && "$2")
}

# lane NAME: run the lane's steps, logging each; returns non-zero if any step failed.
lane() {
	local name=$1 failed=() t0 target dir exe
	# Progress goes to the lane's log and, live, to the terminal (fd 3).
	mark() {
		local line
		line=$(printf '==> [%s] %s (%ss)' "$name" "$*" "$(( $(date +%s) - start ))")
		printf '%s\n' "$line"
		printf '%s\n' "$line" >&3
	}
	try() {
		local what=$1
		shift
		mark "$what"
		t0=$(date +%s)
		# No step reads the list of test binaries the lane is reading.
		if "$@" </dev/null; then
			mark "$what: ok in $(( $(date +%s) - t0 ))s"
		else
			mark "$what: FAILED after $(( $(date +%s) - t0 ))s"
			failed+=("$what")
		fi
	}
	case $name in
		boots)
			try "make demo (the README's main command: the bundle node built, booted, joined to a real control plane)" \
				bash scripts/demo.sh
			while IFS=$'\t' read -r target dir exe; do
				[[ $boot_tests == *" $target "* ]] || continue
				try "test binary $target" run_test "$dir" "$exe"
			done <"$logs/tests.tsv"
			;;
		rest)
			try "the replace demo (scripts/replace-demo.sh: a node drained, reprovisioned on containerd 2.x, uncordoned)" \
				bash scripts/replace-demo.sh
			while IFS=$'\t' read -r target dir exe; do
				[[ $boot_tests == *" $target "* ]] && continue
				try "test binary $target ($(basename "$dir"))" run_test "$dir" "$exe"
			done <"$logs/tests.tsv"
			try "doc tests" cargo test --workspace --locked --doc
			;;
	esac
	if [[ ${#failed[@]} -gt 0 ]]; then
		printf '==> [%s] failed: %s\n' "$name" "${failed[*]}"
		return 1
	fi
}

step "two lanes side by side: boots (make demo, the image-booting tests) and rest (the replace demo, every other test)"
exec 3>&2
lane boots >"$logs/boots.log" 2>&1 &
boots_pid=$!
lane rest >"$logs/rest.log" 2>&1 &
rest_pid=$!
rc=0
wait "$boots_pid" || rc=1
wait "$rest_pid" || rc=1
for l in boots rest; do
	step "the $l lane's log"
	cat "$logs/$l.log" >&2
done
grep -h '^==> \[.*\] failed: ' "$logs/boots.log" "$logs/rest.log" >&2 || true
[[ $rc -eq 0 ]] || { step "FAILED in $(( $(date +%s) - start ))s"; exit 1; }

step "done in $(( $(date +%s) - start ))s"
