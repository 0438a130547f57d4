# The two entry points a fresh Debian/Ubuntu machine needs (see README):
#   make demo   the main job end to end, offline, against the stand-in release mirror
#   make test   install what is missing, then run every check and test
.PHONY: demo test docs
demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

# Regenerate the CLI reference in docs/cli.md from clap and the supported matrix in
# docs/matrix.md from the version tables and `check` (CI checks both are current).
docs:
	cargo run -q -p nodeforge --example cli-reference > docs/cli.md
	cargo run -q -p nodeforge --example matrix > docs/matrix.md
