# Sourced by demo.sh and bench-build.sh: serve a directory read-only over HTTP on 127.0.0.1
# (an ephemeral port), set $mirror to its base URL, and stop the server when the shell exits.
# Usage: . scripts/serve-mirror.sh DIR
serve_dir=$1
portfile=$(mktemp)
python3 - "$serve_dir" "$portfile" <<'PY' &
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=sys.argv[1]))
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
import os; os.rename(sys.argv[2] + ".tmp", sys.argv[2])
srv.serve_forever()
PY
mirror_server_pid=$!
trap 'kill "$mirror_server_pid" 2>/dev/null; rm -f "$portfile"' EXIT
for _ in $(seq 200); do [ -s "$portfile" ] && break; sleep 0.05; done
[ -s "$portfile" ] || { echo "serve-mirror: the HTTP server did not start" >&2; exit 1; }
mirror="http://127.0.0.1:$(cat "$portfile")"
