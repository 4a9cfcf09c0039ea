#!/usr/bin/env bash
# Scale benchmark of tcpdoctor against ss, netstat, lsof and a bare netlink dump.
#
#   sudo bench/run.sh                      # 200,000 sockets, 5 runs per command
#   sudo bench/run.sh --sockets 1000000    # the big one (ss -tanp may hit the timeout)
#   bench/run.sh --help                    # every option (they go to bench/bench.py)
#
# Builds the release binaries, creates a private network namespace, and runs
# bench/bench.py inside it as PID 1 of a private PID namespace with its own /proc, so
# owner scans (tcpdoctor, ss -p, lsof) see the farm's processes and nothing else on the
# host. Everything it starts dies with that PID namespace; the trap below removes the
# network namespace on exit, error or Ctrl-C. Needs root, iproute2, net-tools, lsof,
# util-linux (unshare) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
private_ehash=1
args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;         # use the binaries already in target/release
    --shared-ehash) private_ehash=0 ;;  # see below
    -h|--help) exec python3 bench/bench.py --help ;;
    *) args+=("$a") ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run.sh: needs root (network namespaces, sysctls inside them)" >&2
  exit 2
fi
for tool in ip ss netstat lsof unshare python3; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh: '$tool' not found" >&2; exit 2; }
done

if [ "$build" -eq 1 ]; then
  cargo build --release --bins --features sockfarm --example bare_dump
  mkdir -p target/bench
  rustc -O --edition 2021 bench/spawntime.rs -o target/bench/spawntime
fi
for bin in release/tcpdoctor release/sockfarm release/examples/bare_dump bench/spawntime; do
  [ -x "target/$bin" ] || { echo "bench/run.sh: target/$bin missing (drop --no-build)" >&2; exit 2; }
done

ns="tcpdoctor-bench-$$"
ehash_saved=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$ehash_saved" ]; then sysctl -qw net.ipv4.tcp_child_ehash_entries="$ehash_saved"; fi
  if ip netns list | grep -qw "$ns"; then
    # Normally empty: bench.py's PID namespace takes its processes with it. Anything
    # left was started by this run inside our own namespace; end it by pid.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" || echo "bench/run.sh: could not delete netns $ns" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Private TCP hash table for our namespace, as large as the host's: otherwise every
# sock_diag dump and /proc/net/tcp read also walks the sockets of every other namespace
# on the machine (they share one table), and the timings depend on the neighbours.
# tcp_child_ehash_entries applies to namespaces created while it is set; it is put
# back right after `ip netns add`.
if [ "$private_ehash" -eq 1 ]; then
  ehash_saved="$(sysctl -n net.ipv4.tcp_child_ehash_entries)"
  sysctl -qw net.ipv4.tcp_child_ehash_entries="$(sysctl -n net.ipv4.tcp_ehash_entries)"
fi
ip netns add "$ns"
if [ -n "$ehash_saved" ]; then
  sysctl -qw net.ipv4.tcp_child_ehash_entries="$ehash_saved"
  ehash_saved=""
fi
ip netns exec "$ns" ip link set lo up
# Sysctls of the private namespace only (sockfarm's --widen-port-range, --max-tw-buckets
# and --exact-time-wait would set the same, but it refuses them when it runs inside a
# PID namespace, where /proc/1 is not the host's init). Wide ephemeral range; room for
# every TIME_WAIT; no TIME_WAIT reuse by connect() and no TIME_WAIT killed by a stray
# RST (RFC 1337), so TIME_WAIT counts stay exact.
ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" \
  net.ipv4.tcp_max_tw_buckets=2000000 net.ipv4.tcp_tw_reuse=0 net.ipv4.tcp_rfc1337=1

rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then rev="$rev+uncommitted"; fi
echo "tcpdoctor $rev, netns $ns, TCP hash buckets $(ip netns exec "$ns" sysctl -n net.ipv4.tcp_ehash_entries) (negative: shared with the host)" >&2

# --kill-child: if unshare dies, the PID-1 python (and with it the whole PID
# namespace) is killed too.
ip netns exec "$ns" unshare --pid --fork --mount-proc --kill-child \
  python3 bench/bench.py --cmdline "bench/run.sh $*" "${args[@]}"
