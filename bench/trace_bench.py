#!/usr/bin/env python3
"""Overhead of `tcpdoctor trace`: what tracing costs at 1k, 10k and 20k connections/s.

    sudo python3 bench/trace_bench.py                      # builds, then 1k/10k/20k for 10 s each
    sudo python3 bench/trace_bench.py --rates 10000 --seconds 20 --no-build

In a private network namespace, a sockfarm churn server and client (two processes) make
short loopback connections at a fixed rate, the client closing first (the TIME_WAIT
side), each rate twice: once without the tracer and once with `tcpdoctor trace` running
on the host (narrowed to the namespace with --netns). kernel.bpf_stats_enabled is set to
1 for the run (and restored), so the kernel measures its BPF programs.

Reported per rate:
- tracer CPU, % of one core: tcpdoctor's own utime+stime (/proc/PID/stat, 10 ms ticks)
  plus the run time of its BPF programs (run_time_ns from bpf_prog_info, read before
  and after the load with the bpf() syscall), over the load's wall time. The programs
  run in the context of whatever task the CPU was running (mostly the load generator),
  so their time is also part of the generator's system time;
- ns per program run, and runs per connection;
- the load generator (client + server) CPU per connection and the rate it reached,
  with and without the tracer: the slowdown;
- at the end, a max-rate run (--max-count connections as fast as one client thread
  can) with and without the tracer: the throughput cost.

Every program run on the host counts (the kernel runs them for every TCP state change
in every namespace), so on a shared machine other traffic adds to the BPF time; the
connections the benchmark made are counted exactly (from the tracer's summary) and
shown next to it. Needs root, iproute2, python3, and release builds with the sockfarm
helper (`cargo build --release --bins --features sockfarm`, done unless --no-build).
Cleans up its namespace and processes on exit, error or Ctrl-C.
"""

import argparse
import ctypes
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCPDOCTOR = os.path.join(ROOT, "target/release/tcpdoctor")
SOCKFARM = os.path.join(ROOT, "target/release/sockfarm")
HZ = os.sysconf("SC_CLK_TCK")
LINE_TIMEOUT = 60.0

# bpf(2) commands and the struct bpf_prog_info offsets used (include/uapi/linux/bpf.h).
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
INFO_SIZE = 232
OFF_NAME, OFF_RUN_TIME, OFF_RUN_CNT, OFF_MISSES = 64, 192, 200, 208
TRACE_PROGRAMS = ("trace_state", "trace_send_rese", "trace_receive_r", "trace_accept",
                  "trace_connect4", "trace_connect6",
                  "trace_accept_ex")  # names as the kernel keeps them (15 chars)

libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())


def bpf(cmd, attr):
    if SYS_BPF is None:
        raise OSError("bpf(2) syscall number unknown on " + platform.machine())
    return libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))


def tracer_programs():
    """{name: (run_time_ns, run_cnt, recursion_misses)} of loaded tracer programs."""
    out = {}
    next_id = 0
    for _ in range(100000):  # bounded walk of the program ids
        attr = (ctypes.c_uint32 * 4)(next_id, 0, 0, 0)
        if bpf(BPF_PROG_GET_NEXT_ID, attr) != 0:
            break
        next_id = attr[1]
        fd_attr = (ctypes.c_uint32 * 4)(next_id, 0, 0, 0)
        fd = bpf(BPF_PROG_GET_FD_BY_ID, fd_attr)
        if fd < 0:
            continue
        try:
            info = ctypes.create_string_buffer(INFO_SIZE)
            info_attr = (ctypes.c_uint32 * 4)(fd, INFO_SIZE, 0, 0)
            ctypes.memmove(ctypes.addressof(info_attr) + 8,
                           ctypes.byref(ctypes.c_uint64(ctypes.addressof(info))), 8)
            if bpf(BPF_OBJ_GET_INFO_BY_FD, info_attr) != 0:
                continue
            raw = info.raw
            name = raw[OFF_NAME:OFF_NAME + 16].split(b"\0")[0].decode()
            if name in TRACE_PROGRAMS:
                u64 = lambda off: int.from_bytes(raw[off:off + 8], "little")
                prev = out.get(name, (0, 0, 0))
                out[name] = (prev[0] + u64(OFF_RUN_TIME), prev[1] + u64(OFF_RUN_CNT),
                             prev[2] + u64(OFF_MISSES))
        finally:
            os.close(fd)
    return out


def cpu_ticks(pid):
    """utime + stime of a process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def sysctl_path(key):
    return "/proc/sys/" + key.replace(".", "/")


class Lines:
    """A child whose stdout lines are read on a thread."""

    def __init__(self, argv, what):
        self.what = what
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.cv:
                self.lines.append(line)
                self.cv.notify_all()
        with self.cv:
            self.lines.append(None)
            self.cv.notify_all()

    def line(self, n, timeout=LINE_TIMEOUT):
        """The n-th line (0-based) as JSON."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while len(self.lines) <= n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.what}: no line {n} within {timeout} s")
                self.cv.wait(left)
            if self.lines[n] is None:
                raise RuntimeError(f"{self.what}: exited before line {n}")
            return json.loads(self.lines[n])

    def all_json(self):
        with self.cv:
            return [json.loads(l) for l in self.lines if l]

    def stop(self, sig=None, timeout=30.0):
        if sig is None:
            if self.p.stdin:
                self.p.stdin.close()
        else:
            self.p.send_signal(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
        time.sleep(0.1)


def run_load(ns, addr, rate, count, threads):
    """One client run; returns its result line."""
    argv = ["ip", "netns", "exec", ns, SOCKFARM, "--churn-connect", addr,
            "--churn-count", str(count), "--churn-rate", str(rate),
            "--churn-threads", str(threads), "--hold-secs", "3600"]
    c = Lines(argv, "client")
    result = c.line(0, timeout=max(LINE_TIMEOUT, 3 * count / max(rate, 1)))
    c.stop()
    return result


def measure(ns, addr, server_pid, rate, count, threads, traced, leaks=False):
    """One load run, with or without the tracer (with --leaks: recording who opens each
    socket, with its user stack; one look at the end)."""
    tracer = None
    if traced:
        extra = ["--leaks", "--leak-every", "3600"] if leaks else []
        tracer = Lines([TCPDOCTOR, "trace", "--json", "--interval", "1", "--netns", ns] + extra,
                       "tcpdoctor trace")
        tracer.line(0)  # attached
    server_before = cpu_ticks(server_pid)
    progs_before = tracer_programs() if traced else {}
    tracer_before = cpu_ticks(tracer.p.pid) if traced else 0
    wall0 = time.monotonic()
    result = run_load(ns, addr, rate, count, threads)
    wall = time.monotonic() - wall0
    tracer_after = cpu_ticks(tracer.p.pid) if traced else 0
    progs_after = tracer_programs() if traced else {}
    server_cpu = (cpu_ticks(server_pid) - server_before) / HZ
    row = {
        "rate": rate,
        "traced": traced,
        "leaks": leaks,
        "connected": result["connected"],
        "failed": sum(result["failed"].values()),
        "elapsed_s": result["elapsed_ms"] / 1000,
        "wall_s": wall,
        "load_cpu_s": (result["utime_us"] + result["stime_us"]) / 1e6 + server_cpu,
    }
    if traced:
        time.sleep(1.2)  # the last interval
        tracer.stop(signal.SIGTERM)
        lines = tracer.all_json()
        summary = lines[-1]
        if leaks:
            look = [l for l in lines if l.get("record") == "leaks"]
            row["origin_table"] = look[-1]["table"] if look else None
        if summary.get("record") != "summary":
            raise RuntimeError("tracer did not print a summary")
        run_ns = sum(a[0] - progs_before.get(k, (0, 0, 0))[0] for k, a in progs_after.items())
        runs = sum(a[1] - progs_before.get(k, (0, 0, 0))[1] for k, a in progs_after.items())
        misses = sum(a[2] - progs_before.get(k, (0, 0, 0))[2] for k, a in progs_after.items())
        opened = sum(f["opened"] for f in summary["flows"] if f["direction"] == "active")
        row.update({
            "tracer_cpu_s": (tracer_after - tracer_before) / HZ,
            "bpf_s": run_ns / 1e9,
            "bpf_runs": runs,
            "misses": misses,
            "traced_opened": opened,
            "flows_full": summary["losses"]["flows_full"],
        })
    return row


def machine():
    model, mem = "?", "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        with open("/proc/meminfo") as f:
            kib = int(next(l.split()[1] for l in f if l.startswith("MemTotal")))
            mem = f"{kib / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} CPUs ({model}), {mem}, Linux {platform.release()}"


def report_header(args, load_start):
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "?"
    load = lambda l: " ".join(f"{x:.2f}" for x in l)
    return "\n".join([
        "## tcpdoctor trace overhead",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; tcpdoctor {commit}; "
        f"command: `bench/trace_bench.py --rates {args.rates} --seconds {args.seconds:g}`",
        f"- machine: {machine()}",
        f"- load average (1, 5, 15 min) at start {load(load_start)}, "
        f"at end {load(os.getloadavg())}",
        "- load: sockfarm churn client and server in a private network namespace, "
        "client closes first, loopback; each rate once without and once with "
        "`tcpdoctor trace --json --interval 1 --netns NS` on the host",
        "- tracer CPU = tcpdoctor's utime+stime (/proc/PID/stat) + its BPF programs' "
        "run_time_ns (kernel.bpf_stats_enabled=1), over the load's wall time",
        "",
    ])


# Program runs one loopback connection of this load makes: 5 state changes of the client
# socket (CLOSE->SYN_SENT->ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE) and 5 of the
# server's (LISTEN->SYN_RECV->ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE). More runs per
# connection in a row mean other traffic on the host ran the programs too.
RUNS_PER_CONNECTION = 10


def own_bpf(t):
    """BPF time of the benchmark's own connections: the mean run time times their runs."""
    per_run = t["bpf_s"] / max(t["bpf_runs"], 1)
    return per_run * RUNS_PER_CONNECTION * t["connected"]


def pct(x):
    return f"{100 * x:.2f}%"


def variants(args):
    """(traced, leaks) of the runs at each rate."""
    return [(False, False), (True, False)] + ([(True, True)] if args.leaks else [])


def print_leaks_table(rows):
    """trace vs trace --leaks at each rate: what stack capture adds."""
    print()
    print("| rate asked | reached plain / traced / --leaks | tracer CPU traced / --leaks "
          "| ns per program run traced / --leaks | BPF runs per connection traced / --leaks "
          "| origin table at the end |")
    print("|---:|---|---|---|---|---|")
    by_rate = {}
    for r in rows:
        key = "leaks" if r.get("leaks") else "traced" if r["traced"] else "plain"
        by_rate.setdefault(r["rate"], {})[key] = r
    reach = lambda r: r["connected"] / r["elapsed_s"] if r["elapsed_s"] else 0
    cpu = lambda r: pct((r["tracer_cpu_s"] + r["bpf_s"]) / (r["elapsed_s"] or r["wall_s"]))
    per_run = lambda r: 1e9 * r["bpf_s"] / max(r["bpf_runs"], 1)
    per_conn = lambda r: r["bpf_runs"] / max(r["connected"], 1)
    for rate, v in by_rate.items():
        p, t, l = v.get("plain"), v.get("traced"), v.get("leaks")
        if not (p and t and l):
            continue
        label = f"{rate}/s" if rate else f"max ({l['connected']} conns)"
        table = l.get("origin_table") or {}
        print(f"| {label} | {reach(p):.0f} / {reach(t):.0f} / {reach(l):.0f} per s "
              f"| {cpu(t)} / {cpu(l)} | {per_run(t):.0f} / {per_run(l):.0f} "
              f"| {per_conn(t):.1f} / {per_conn(l):.1f} "
              f"| {table.get('present', '?')} present, {table.get('added', '?')} added, "
              f"{table.get('evicted', '?')} pushed out |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="1000,10000,20000",
                    help="connections per second, comma-separated (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=10.0, help="load per run (default: 10)")
    ap.add_argument("--threads", type=int, default=0,
                    help="client threads (default: 1 up to 5k/s, 2 above)")
    ap.add_argument("--max-count", type=int, default=100000,
                    help="connections of the max-rate runs (0: skip them; default: %(default)s)")
    ap.add_argument("--no-build", action="store_true", help="use target/release as it is")
    ap.add_argument("--json-out", help="also write the rows as JSON here")
    ap.add_argument("--leaks", action="store_true",
                    help="also run each rate with `trace --leaks` (stack capture)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("trace_bench.py: needs root (BPF, network namespaces)")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bins", "--features", "sockfarm"],
                       cwd=ROOT, check=True)
    for b in (TCPDOCTOR, SOCKFARM):
        if not os.access(b, os.X_OK):
            sys.exit(f"trace_bench.py: {b} missing (drop --no-build)")
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    load_start = os.getloadavg()

    ns = f"tcpdoctor-tracebench-{os.getpid()}"
    stats_key = "kernel.bpf_stats_enabled"
    with open(sysctl_path(stats_key)) as f:
        stats_saved = f.read().strip()
    server = None
    rows = []
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # Room for 20k/s with the client closing first: TIME_WAIT ports come back
        # after 1 s on loopback (tcp_tw_reuse=2, the default).
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                        "echo 1024 65535 > /proc/sys/net/ipv4/ip_local_port_range"], check=True)
        with open(sysctl_path(stats_key), "w") as f:
            f.write("1\n")
        server = Lines(["ip", "netns", "exec", ns, SOCKFARM, "--churn-serve", "127.0.0.1:0",
                        "--churn-threads", "2", "--hold-secs", "3600"], "server")
        ready = server.line(0)
        addr, server_pid = ready["listen"], ready["pid"]
        for rate in rates:
            count = int(rate * args.seconds)
            threads = args.threads or (1 if rate <= 5000 else 2)
            for traced, leaks in variants(args):
                row = measure(ns, addr, server_pid, rate, count, threads, traced, leaks)
                rows.append(row)
                kind = "leaks " if leaks else "traced" if traced else "plain "
                print(f"# {rate}/s {kind}: {json.dumps(row)}", file=sys.stderr)
                time.sleep(2)  # let TIME_WAIT reuse catch up between runs
        if args.max_count:
            for traced, leaks in variants(args):
                row = measure(ns, addr, server_pid, 0, args.max_count, 1, traced, leaks)
                rows.append(row)
                kind = "leaks " if leaks else "traced" if traced else "plain "
                print(f"# max rate {kind}: {json.dumps(row)}", file=sys.stderr)
                time.sleep(2)
    finally:
        if server:
            server.stop()
        with open(sysctl_path(stats_key), "w") as f:
            f.write(stats_saved + "\n")
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)

    print(report_header(args, load_start))
    print("| rate asked | reached plain / traced | tracer CPU (% of one core) | of which BPF | "
          "tcpdoctor process | ns per program run | runs per connection | "
          f"tracer CPU at {RUNS_PER_CONNECTION} runs per connection | "
          "load CPU µs per connection plain / traced | counted by the tracer |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
    by_rate = {}
    for r in rows:
        if not r.get("leaks"):
            by_rate.setdefault(r["rate"], {})[r["traced"]] = r
    for rate, pair in by_rate.items():
        p, t = pair.get(False), pair.get(True)
        if not p or not t:
            continue
        wall = t["elapsed_s"] or t["wall_s"]
        reach = lambda r: r["connected"] / r["elapsed_s"] if r["elapsed_s"] else 0
        per_conn = lambda r: 1e6 * r["load_cpu_s"] / max(r["connected"], 1)
        conns = max(t["connected"], 1)
        label = f"{rate}/s" if rate else f"max ({t['connected']} conns)"
        print(f"| {label} | {reach(p):.0f} / {reach(t):.0f} per s "
              f"| {pct((t['tracer_cpu_s'] + t['bpf_s']) / wall)} | {pct(t['bpf_s'] / wall)} "
              f"| {pct(t['tracer_cpu_s'] / wall)} "
              f"| {1e9 * t['bpf_s'] / max(t['bpf_runs'], 1):.0f} "
              f"| {t['bpf_runs'] / conns:.1f} "
              f"| {pct((t['tracer_cpu_s'] + own_bpf(t)) / wall)} "
              f"| {per_conn(p):.1f} / {per_conn(t):.1f} "
              f"| {t['traced_opened']} of {t['connected']} opened; "
              f"{t['misses']} missed runs, {t['flows_full']} flow-table losses |")
    if args.leaks:
        print_leaks_table(rows)


if __name__ == "__main__":
    main()
