#!/usr/bin/env bash
# The exporter under slow clients (issue 16): `tcpdoctor serve` in a private network
# namespace, 1,000 slow clients (each sends a partial request a byte at a time and
# reconnects when the server drops it) beside a scraper that fetches /metrics with curl
# every 5 s, as Prometheus would (10 s timeout). Reports scrape latency percentiles,
# failures, and RSS and threads over time (bench/slow_clients.py).
#
#   sudo bench/slow_clients.sh                      # 30 minutes, 1,000 clients
#   sudo bench/slow_clients.sh --minutes 5          # a shorter soak
#   bench/slow_clients.sh --help                    # every option
#
# Builds the release binary unless --no-build. Cleanup on exit, error or Ctrl-C: every
# process left in OUR namespace (by pid, from `ip netns pids`) is ended and the
# namespace deleted.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
args=()
for a in "$@"; do
  case "$a" in
    -h|--help) exec python3 bench/slow_clients.py --help ;;
    --no-build) build=0 ;;
    *) args+=("$a") ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/slow_clients.sh: needs root (network namespaces)" >&2
  exit 2
fi
for tool in ip curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/slow_clients.sh: '$tool' not found" >&2; exit 2; }
done
[ "$build" -eq 0 ] || cargo build --release --bin tcpdoctor
[ -x target/release/tcpdoctor ] || { echo "bench/slow_clients.sh: target/release/tcpdoctor missing" >&2; exit 2; }

ns="tdbench-slow-$$"
cleanup() {
  trap - EXIT INT TERM
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" || echo "bench/slow_clients.sh: could not delete netns $ns" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$ns"
ip -n "$ns" link set lo up
ip netns exec "$ns" python3 bench/slow_clients.py --bin target/release/tcpdoctor "${args[@]}"
