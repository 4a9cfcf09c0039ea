#!/usr/bin/env bash
# Many-namespaces benchmark: `tcpdoctor states|check --netns all` against running
# `ss -tan` in every namespace, timed from the host namespace.
#
#   sudo bench/netns.sh                                        # 100 namespaces x 2,000 sockets
#   sudo bench/netns.sh --namespaces 5 --sockets-per-ns 200    # a quick plumbing test
#   sudo bench/netns.sh --netns-args ''                        # tcpdoctor without --netns
#   bench/netns.sh --help                                      # every option (bench/netns_bench.py)
#
# Builds the release binaries and bench/spawntime, then runs bench/netns_bench.py, which
# makes the namespaces tcpdoctor-nsbench-<this script's pid>-<i> (each with `lo` up and
# one sockfarm holding exactly --sockets-per-ns sockets), times the commands and prints a
# Markdown report. The namespaces keep the kernel default tcp_child_ehash_entries=0, so
# they share the host's TCP hash table like ordinary containers do: every per-namespace
# sock_diag dump walks the whole shared table, about 17 ms per address family here
# however few sockets the namespace holds. That is the realistic case, and the cost this
# benchmark is about; do not give them private tables.
#
# Cleanup: the trap below ends the helper (by pid), then ends every process left in one
# of OUR namespaces (by pid, from `ip netns pids`) and deletes our namespaces, on exit,
# error, Ctrl-C or SIGTERM. Other namespaces are never touched. Needs root, iproute2
# and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    -h|--help) exec python3 bench/netns_bench.py --help ;;
    *) args+=("$a") ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/netns.sh: needs root (network namespaces)" >&2
  exit 2
fi
for tool in ip ss python3 awk; do
  command -v "$tool" >/dev/null || { echo "bench/netns.sh: '$tool' not found" >&2; exit 2; }
done

if [ "$build" -eq 1 ]; then
  cargo build --release --bins --features sockfarm
  mkdir -p target/bench
  rustc -O --edition 2021 bench/spawntime.rs -o target/bench/spawntime
fi
for bin in release/tcpdoctor release/sockfarm bench/spawntime; do
  [ -x "target/$bin" ] || { echo "bench/netns.sh: target/$bin missing (drop --no-build)" >&2; exit 2; }
done

prefix="tcpdoctor-nsbench-$$-"
helper=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$helper" ] && kill -0 "$helper" 2>/dev/null; then
    # The helper removes its namespaces itself on SIGTERM; give it a bounded while.
    kill -TERM "$helper" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$helper" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$helper" 2>/dev/null || true
  fi
  # Whatever is left (helper killed hard, or this script interrupted early).
  local left
  left="$(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${prefix}" || true)"
  if [ -n "$left" ]; then
    for ns in $left; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    done
    sleep 1
    for ns in $left; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      ip netns del "$ns" || echo "bench/netns.sh: could not delete netns $ns" >&2
    done
  fi
  # The helper's scratch directory (farm stderr), if it could not remove it itself.
  rm -rf /tmp/"${prefix}"*
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then rev="$rev+uncommitted"; fi
echo "tcpdoctor $rev, namespaces ${prefix}*" >&2

# In the background so that `wait` returns as soon as a signal arrives and the trap
# runs at once (a foreground child would delay it until the child ends).
python3 bench/netns_bench.py --prefix "$prefix" --cmdline "bench/netns.sh $*" "${args[@]}" &
helper=$!
status=0
wait "$helper" || status=$?
helper=""
exit "$status"
