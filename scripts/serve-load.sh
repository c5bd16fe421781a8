#!/usr/bin/env bash
# Throughput and latency of `jem serve` under load: wrk (Debian package `wrk`) keeps CONNS
# connections posting IMAGES real Fashion-MNIST test images each for SECS seconds, against a
# server on a free loopback port. Client and server share the machine's cores.
#
# Usage: scripts/serve-load.sh RUN [CONNS (32)] [IMAGES per request (1)] [SECS (20)] [serve flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
run=$1
conns=${2:-32}
images=${3:-1}
secs=${4:-20}
shift $(($# < 4 ? $# : 4))
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
jem=target/release/jem
[ -x "$jem" ] || cargo build --release -p jem-cli
tmp=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
python3 - "$images" /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz > "$tmp/body.json" <<'PY'
import gzip, json, sys
k, path = int(sys.argv[1]), sys.argv[2]
raw = gzip.open(path).read()
imgs = [[b / 255 for b in raw[16 + i * 784:16 + (i + 1) * 784]] for i in range(k)]
print(json.dumps({"images": imgs}))
PY
cat > "$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$tmp/body.json", "r")
wrk.body = f:read("*a")
f:close()
LUA
"$jem" serve --run "$run" --addr 127.0.0.1:0 "$@" > "$tmp/out" 2> "$tmp/err" &
pid=$!
for _ in $(seq 100); do grep -q listening "$tmp/out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$tmp/out")
[ -n "$url" ] || { cat "$tmp/err" >&2; exit 1; }
echo "== $conns connections, $images image(s) per request, ${secs}s against $url"
wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$tmp/post.lua" "$url/v1/predict"
kill -TERM "$pid"
wait "$pid"
