#!/usr/bin/env python3
"""Many-namespaces benchmark: tcpdoctor --netns all against ss in every namespace.

Run through bench/netns.sh (root): it builds the binaries and removes every namespace
this run made on exit, error or Ctrl-C, even if this script is killed. This script
makes --namespaces network namespaces named <prefix><i>, each with `lo` up and one
sockfarm holding exactly --sockets-per-ns TCP sockets, then times, from the HOST
network namespace, interleaved:

  tcpdoctor states <netns args>
  tcpdoctor check <netns args> --interval 0
  tcpdoctor check <netns args>                (default interval)
  for ns in $(ip netns list): ip netns exec $ns ss -tan | wc -l   (one timing)

<netns args> is --netns-args (default "--netns all"). A tcpdoctor that rejects them
is reported as such and the rest goes on.

The namespaces keep the kernel default tcp_child_ehash_entries = 0: they share the
host's TCP hash table, as containers normally do. So every sock_diag dump in any of
them walks the whole shared table (all buckets, every namespace's sockets), which is
what makes a per-namespace dump cost about 17 ms per address family on this machine
whatever the namespace holds; that cost times the namespace count is what is measured.

Every loop is bounded by a count and every wait by a timeout. Timing uses
bench/spawntime (fork, exec, wait4) through bench.py's timed_run.
"""

import argparse
import json
import math
import os
import selectors
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no bench/__pycache__ in the tree
import bench  # noqa: E402  (the machine description, timed_run, wait_quiet)
from bench import BenchError, log  # noqa: E402

FDS_PER_WORKER = 15_000      # sockfarm descriptors per worker process (RLIMIT_NOFILE 20000)
CHECK_TARGET_S = 3.0         # target: check --netns all at most 3 s (100 x 2,000 sockets)
FARM_STOP_TIMEOUT_S = 20.0   # per farm, after its stdin closes (then SIGTERM, SIGKILL)
OK_EXITS = (0, 1, 2)         # tcpdoctor: 0 fine, 1 warning, 2 critical findings; 3 error


def ns_plan(sockets):
    """sockfarm flags for exactly `sockets` sockets: L listeners + 2 per connection
    (ESTABLISHED pairs, or CLOSE_WAIT + FIN_WAIT2 pairs), ~20% of them CLOSE_WAIT."""
    listeners = 2 if sockets % 2 == 0 else 1
    conns = (sockets - listeners) // 2
    close_wait = round(conns * 0.2)
    est = conns - close_wait
    assert listeners + 2 * (est + close_wait) == sockets
    # One IPv4 and (even counts) one IPv6 listener: both families have sockets.
    listen = ["127.0.0.1:5000"] + (["[::1]:5001"] if listeners == 2 else [])
    return {"listen": listen, "established": est, "close_wait": close_wait,
            "processes": max(1, math.ceil(2 * conns / FDS_PER_WORKER))}


def ip_netns_names():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class Farms:
    """Our namespaces and the sockfarm in each; stop() undoes all of it."""

    def __init__(self, args):
        self.args = args
        self.names = []      # namespaces this run created
        self.procs = {}      # name -> Popen
        self.ready = {}      # name -> ready line
        # Named after the run (netns.sh's trap removes it if this script is killed).
        self.tmp = tempfile.mkdtemp(prefix=args.prefix, dir="/tmp")
        self.build_s = 0.0

    def create_namespaces(self):
        t0 = time.monotonic()
        for i in range(self.args.namespaces):
            name = f"{self.args.prefix}{i}"
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
            self.names.append(name)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                           timeout=30)
        log(f"{len(self.names)} namespaces in {time.monotonic() - t0:.1f} s")

    def start_farms(self):
        """One sockfarm per namespace, at most --parallel building at once, each
        given --ready-timeout s to print its JSON ready line."""
        a = self.args
        plan = ns_plan(a.sockets_per_ns)
        sockfarm = os.path.join(a.bin_dir, "sockfarm")
        argv_tail = [sockfarm]
        for addr in plan["listen"]:
            argv_tail += ["--listen", addr]
        argv_tail += ["--established", str(plan["established"]),
                      "--close-wait", str(plan["close_wait"]),
                      "--processes", str(plan["processes"]),
                      "--hold-secs", "3600", "--quiet-fds"]
        self.argv_example = ["ip", "netns", "exec", "NS"] + argv_tail
        log("farm per namespace: " + " ".join(argv_tail))
        sel = selectors.DefaultSelector()
        pending = list(self.names)
        active = {}  # fd -> [name, deadline, buffer]
        t0 = time.monotonic()
        # Bounded: each pass either starts a farm, reads a chunk, or waits 0.5 s, and
        # every farm has a deadline.
        max_passes = len(self.names) * (int(a.ready_timeout / 0.5) + 200) + 100
        for _ in range(max_passes):
            if not pending and not active:
                break
            while pending and len(active) < a.parallel:
                name = pending.pop(0)
                err = open(os.path.join(self.tmp, name + ".err"), "wb")
                # stdin is a pipe we keep: if this script dies, the farm sees EOF and exits.
                p = subprocess.Popen(["ip", "netns", "exec", name] + argv_tail,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=err)
                err.close()
                self.procs[name] = p
                os.set_blocking(p.stdout.fileno(), False)
                sel.register(p.stdout.fileno(), selectors.EVENT_READ)
                active[p.stdout.fileno()] = [name, time.monotonic() + a.ready_timeout, b""]
            for key, _ in sel.select(0.5):
                fd = key.fd
                name, _, buf = active[fd]
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise BenchError(f"sockfarm in {name} exited before it was ready: "
                                     f"{self.stderr(name)}")
                buf += chunk
                active[fd][2] = buf
                if b"\n" in buf:
                    ready = json.loads(buf.split(b"\n", 1)[0])
                    total = sum(ready["expected"].values())
                    if total != a.sockets_per_ns:
                        raise BenchError(f"sockfarm in {name} expects {total} sockets, "
                                         f"not {a.sockets_per_ns}: {ready['expected']}")
                    self.ready[name] = ready
                    sel.unregister(fd)
                    del active[fd]
            now = time.monotonic()
            for fd, (name, deadline, _) in list(active.items()):
                if now > deadline:
                    raise BenchError(f"sockfarm in {name} not ready within "
                                     f"{a.ready_timeout:.0f} s: {self.stderr(name)}")
        else:
            raise BenchError("farms: pass limit reached")
        sel.close()
        self.build_s = time.monotonic() - t0
        self.plan = plan
        log(f"{len(self.ready)} farms ready in {self.build_s:.1f} s")

    def stderr(self, name):
        try:
            with open(os.path.join(self.tmp, name + ".err"), "rb") as f:
                return f.read()[-500:].decode(errors="replace").strip() or "(no stderr)"
        except OSError:
            return "(no stderr)"

    def check_alive(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise BenchError(f"sockfarm in {name} exited ({p.returncode}): "
                                 f"{self.stderr(name)}")

    def count(self):
        """Sockets per namespace as ss sees them (one short `ss -tanH` in each)."""
        out = {}
        for name in self.names:
            p = subprocess.run(["ip", "netns", "exec", name, "ss", "-tanH"],
                               capture_output=True, text=True, timeout=60)
            out[name] = len(p.stdout.splitlines()) if p.returncode == 0 else -1
        return out

    def stop(self):
        # Close every stdin first (all farms wind down in parallel), then wait for each
        # with a bound; a farm still running is ended by its pid.
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        for name, p in self.procs.items():
            try:
                p.wait(FARM_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for name in self.names:
            # Anything left in a namespace we made was started by us: end it by pid.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, timeout=30).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            r = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True,
                               timeout=30)
            if r.returncode != 0:
                log(f"could not delete netns {name}: {r.stderr.strip()}")
        self.names = []
        for f in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, f))
        os.rmdir(self.tmp)


class Cmd:
    def __init__(self, label, argv, is_check=False):
        self.label = label
        self.argv = argv
        self.is_check = is_check
        self.runs = []
        self.failed = None  # why it was dropped

    def done(self):
        return [r for r in self.runs if not r["timed_out"]]


def commands(args, ours_only):
    td = os.path.join(args.bin_dir, "tcpdoctor")
    text = args.netns_args.replace("{ns0}", f"{args.prefix}0")
    nsa = shlex.split(text)
    shown = (" " + text) if nsa else ""
    if ours_only:
        lst = f"ip netns list | awk '{{print $1}}' | grep '^{args.prefix}'"
        loop_label = f"for ns in (our {args.namespaces} namespaces): ip netns exec $ns ss -tan | wc -l"
    else:
        lst = "ip netns list | awk '{print $1}'"
        loop_label = "for ns in $(ip netns list): ip netns exec $ns ss -tan | wc -l"
    loop = f'for ns in $({lst}); do ip netns exec "$ns" ss -tan | wc -l; done'
    return [
        Cmd(f"tcpdoctor states{shown}", [td, "states"] + nsa),
        Cmd(f"tcpdoctor check{shown} --interval 0", [td, "check"] + nsa + ["--interval", "0"],
            True),
        Cmd(f"tcpdoctor check{shown}", [td, "check"] + nsa, True),
        Cmd(loop_label, ["bash", "-c", loop]),
    ]


def bad_exit(c, r):
    if r["timed_out"]:
        return False
    if c.argv[0] == "bash":
        return r["exit"] != 0
    return r["exit"] not in OK_EXITS


def why_failed(r):
    first = (r["stderr"].splitlines() or ["(no stderr)"])[0]
    if "--netns" in r["stderr"] and r["exit"] == 3:
        return f"this tcpdoctor has no --netns yet (exit 3: `{first}`)"
    return f"exit {r['exit']}: `{first}`"


def run_all(cmds, farms, args):
    for c in cmds:  # untimed warm-up; also finds a command that cannot run at all
        r = bench.timed_run(c.argv, args.slow_timeout, args.spawntime)
        if bad_exit(c, r):
            c.failed = why_failed(r)
            log(f"  {c.label}: FAILED, {c.failed}; dropped from the timings")
        else:
            log(f"  warm-up {c.label}: {r['wall_s']:.3f} s")
    for rep in range(args.runs):
        for c in cmds:
            if c.failed or (c.runs and c.runs[-1]["timed_out"]):
                continue
            farms.check_alive()
            busy = bench.wait_quiet(args)
            r = bench.timed_run(c.argv, args.slow_timeout, args.spawntime)
            r["busy_before"] = busy
            c.runs.append(r)
            note = " TIMEOUT" if r["timed_out"] else (f" exit {r['exit']}" if r["exit"] else "")
            log(f"  {c.label} run {rep + 1}: {r['wall_s']:.3f} s, cpu {r['cpu_s']:.3f} s, "
                f"{r['maxrss_kib'] / 1024:.1f} MiB{note}")
            if bad_exit(c, r):
                c.failed = why_failed(r)
                log(f"    FAILED: {c.failed}")


def report(args, mach, farms, cmds, started, counts, others, ns_ehash, host_socks):
    n, s = args.namespaces, args.sockets_per_ns
    plan = farms.plan
    print(f"\n## tcpdoctor many-namespaces benchmark: {n} namespaces x {s:,} sockets "
          f"= {n * s:,}\n")
    print(f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}; command: `{args.cmdline}`")
    print(f"- machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['mem_gib']} GiB, "
          f"kernel {mach['kernel']}, {mach['os']}, RLIMIT_NOFILE {mach['nofile']}")
    print(f"- tools: {mach['ss']}")
    print(f"- load average (1 min) at start {mach['load1_start']:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")
    print(f"- namespaces `{args.prefix}0..{n - 1}`, each with `lo` up and one sockfarm "
          f"({', '.join(plan['listen'])}; {plan['established']} established + "
          f"{plan['close_wait']} close-wait connections = {2 * plan['established']} ESTABLISHED "
          f"+ {plan['close_wait']} CLOSE_WAIT + {plan['close_wait']} FIN_WAIT2 + "
          f"{len(plan['listen'])} LISTEN); built {args.parallel} at a time in "
          f"{farms.build_s:.1f} s")
    total = sum(v for v in counts.values() if v > 0)
    bad = {k: v for k, v in counts.items() if v != s}
    print(f"- sockets seen by `ss -tan` in our namespaces before timing: {total:,}"
          + (f"; **{len(bad)} namespaces differ from {s}**: {bad}" if bad else
             f" ({s:,} in each)"))
    ehash = int(mach["ehash"])
    print(f"- TCP hash table: our namespaces report tcp_ehash_entries {ns_ehash} "
          + ("(negative: they share the host's table" if ns_ehash < 0 else "(private tables")
          + f", {abs(ehash):,} buckets in the host namespace); tcp_child_ehash_entries left "
          f"at {open('/proc/sys/net/ipv4/tcp_child_ehash_entries').read().strip()}")
    print(f"- host namespace: {host_socks:,} TCP sockets in use (incl. TIME_WAIT; "
          "/proc/net/sockstat). Commands run in the host namespace")
    if others:
        print(f"- **other named namespaces on the machine** (`ip netns list`, not ours): "
              f"{', '.join(others)}. `--netns all` visits them too"
              + ("; so does the ss loop" if not args.ss_loop_ours else
                 "; the ss loop is limited to our namespaces (--ss-loop ours)"))
    else:
        print("- no other named namespaces on the machine")
    print(f"- runs: {args.runs} per command, interleaved, after one untimed warm-up each; "
          f"each run waits up to {args.quiet_wait:.0f} s for the CPUs to be below "
          f"{args.quiet_below:.0%} busy; timeout {args.slow_timeout:.0f} s per run; stdout "
          "to /dev/null; timed by bench/spawntime (wait4: CPU and peak RSS include the "
          "command's children)")
    print("\n| command | runs | median s | min s | max s | cpu s (user+sys, median) | "
          "peak RSS MiB | exit | CPU busy before | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for c in cmds:
        d = c.done()
        label = c.label.replace("|", "\\|")
        if d:
            w = [r["wall_s"] for r in d]
            exits = ",".join(sorted({str(r["exit"]) for r in d}))
            busy = statistics.median(r["busy_before"] for r in c.runs)
            note = c.failed or ""
            print(f"| `{label}` | {len(d)} | {statistics.median(w):.3f} | {min(w):.3f} | "
                  f"{max(w):.3f} | {statistics.median(r['cpu_s'] for r in d):.3f} | "
                  f"{max(r['maxrss_kib'] for r in d) / 1024:.1f} | {exits} | {busy:.0%} | "
                  f"{note} |")
        else:
            note = c.failed or ("timed out" if c.runs else "not run")
            print(f"| `{label}` | 0 | - | - | - | - | - | - | - | **{note}** |")
    print("\n### Targets\n")
    results = []
    full = n >= 100 and s >= 2000 and "all" in shlex.split(args.netns_args)
    loop = cmds[3]
    for c in cmds[1:3]:
        name = f"`{c.label}` at most {CHECK_TARGET_S:.0f} s (100 namespaces x 2,000 sockets)"
        d = c.done()
        if not d:
            verdict, detail = "n/a", f"no timing: {c.failed or 'no run finished'}"
        else:
            m = statistics.median(r["wall_s"] for r in d)
            ok = m <= CHECK_TARGET_S
            verdict = ("MET" if ok else "MISSED") if full else "n/a"
            detail = f"median {m:.3f} s"
            if loop.done():
                lm = statistics.median(r["wall_s"] for r in loop.done())
                detail += (f" ({lm / m:.1f}x faster than the ss loop, {lm:.3f} s)" if lm >= m
                           else f" ({m / lm:.1f}x the time of the ss loop, {lm:.3f} s)")
            if not full:
                detail += (" (the target is set at --netns all over 100 namespaces of 2,000 "
                           "sockets)")
        results.append((name, verdict))
        print(f"- {name}: {detail} -> **{verdict}**")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="bench/netns.sh also takes --no-build.")
    ap.add_argument("--namespaces", type=int, default=100, help="default 100")
    ap.add_argument("--sockets-per-ns", type=int, default=2000,
                    help="exactly this many TCP sockets in each namespace (default 2000)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command (default 5)")
    ap.add_argument("--netns-args", default="--netns all",
                    help="namespace selection given to tcpdoctor after the subcommand "
                         "(default '--netns all'; '' = none, tcpdoctor's default; {ns0} stands "
                         "for this run's first namespace, e.g. --netns-args='--netns {ns0}' "
                         "for a plumbing test that stays off other namespaces)")
    ap.add_argument("--ss-loop", choices=["all", "ours"], default="all",
                    help="namespaces the ss loop visits: every `ip netns list` entry "
                         "(default) or only this run's")
    ap.add_argument("--parallel", type=int, default=4,
                    help="farms building at the same time (default 4)")
    ap.add_argument("--ready-timeout", type=float, default=120.0,
                    help="longest wait for one farm's ready line (default 120)")
    ap.add_argument("--slow-timeout", type=float, default=600.0,
                    help="kill a timed run after this many s (default 600)")
    ap.add_argument("--quiet-below", type=float, default=0.25,
                    help="before each run wait until less than this fraction of all CPUs "
                         "is busy (default 0.25) ...")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="... but at most this many s (default 30; 0 = do not wait)")
    ap.add_argument("--json-out", default="", help="also write the raw results here")
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--spawntime", default="target/bench/spawntime")
    ap.add_argument("--prefix", default=f"tcpdoctor-nsbench-{os.getpid()}-",
                    help=argparse.SUPPRESS)
    ap.add_argument("--cmdline", default="bench/netns.sh", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 1 <= args.namespaces <= 1000:
        ap.error("--namespaces must be 1 to 1000")
    if not 4 <= args.sockets_per_ns <= 100_000:
        ap.error("--sockets-per-ns must be 4 to 100000")
    if not 1 <= args.runs <= 50:
        ap.error("--runs must be 1 to 50")
    if not 1 <= args.parallel <= 64:
        ap.error("--parallel must be 1 to 64")
    if os.geteuid() != 0:
        ap.error("needs root (run bench/netns.sh)")
    args.ss_loop_ours = args.ss_loop == "ours"

    # SIGTERM (netns.sh's trap sends it) ends the run through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.now(timezone.utc)
    mach = bench.machine()
    others = [x for x in ip_netns_names() if not x.startswith(args.prefix)]
    if others:
        log(f"other named namespaces present (not ours, left alone): {', '.join(others)}; "
            f"`--netns all`{'' if args.ss_loop_ours else ' and the ss loop'} will visit them")
    farms = Farms(args)
    try:
        farms.create_namespaces()
        ns_ehash = int(subprocess.run(
            ["ip", "netns", "exec", farms.names[0], "sysctl", "-n",
             "net.ipv4.tcp_ehash_entries"], capture_output=True, text=True, timeout=30,
            check=True).stdout)
        farms.start_farms()
        counts = farms.count()
        total = sum(counts.values())
        log(f"ss -tan in our namespaces: {total:,} sockets "
            f"(expected {args.namespaces * args.sockets_per_ns:,})")
        with open("/proc/net/sockstat") as f:
            tcp = next(line.split() for line in f if line.startswith("TCP:"))
        host_socks = int(tcp[tcp.index("inuse") + 1]) + int(tcp[tcp.index("tw") + 1])
        cmds = commands(args, args.ss_loop_ours)
        log("timing (host namespace)")
        run_all(cmds, farms, args)
        results = report(args, mach, farms, cmds, started, counts, others, ns_ehash,
                         host_socks)
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"args": vars(args), "machine": mach, "plan": farms.plan,
                           "farm_example": farms.argv_example, "counts": counts,
                           "other_namespaces": others, "targets": results,
                           "commands": [{"label": c.label, "argv": c.argv, "failed": c.failed,
                                         "runs": c.runs} for c in cmds]}, f, indent=1)
        return 0
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log(f"error: {e}")
        return 3
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        # A second SIGTERM or Ctrl-C (a signal to the whole group, then netns.sh's trap)
        # must not cut the cleanup short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log(f"removing {len(farms.names)} namespaces and their farms")
        farms.stop()


if __name__ == "__main__":
    sys.exit(main())
