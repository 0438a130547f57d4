#!/usr/bin/env bash
# `make test`: install what is missing, then every check and test, failing on the first.
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

step "CLI reference is current"
cargo run -q -p nodeforge --example cli-reference --locked | diff -u docs/cli.md - \
  || { echo "docs/cli.md is stale: run 'make docs'" >&2; exit 1; }

step "Supported matrix is current"
cargo run -q -p nodeforge --example matrix --locked | diff -u docs/matrix.md - \
  || { echo "docs/matrix.md is stale: run 'make docs'" >&2; exit 1; }

step "cargo build --workspace (the end-to-end tests run nodeforge, test-vm and the guest agent)"
cargo build --workspace --locked

step "make demo (the README's main command: the bundle node built, booted, joined to a real control plane)"
bash scripts/demo.sh

step "the replace demo (scripts/replace-demo.sh: a node drained, reprovisioned on containerd 2.x, uncordoned)"
bash scripts/replace-demo.sh

step "cargo test (unit, integration, real consumers, images booted in QEMU)"
cargo test --workspace --locked --no-fail-fast

step "done in $(( $(date +%s) - start ))s"
