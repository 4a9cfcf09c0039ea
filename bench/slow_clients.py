#!/usr/bin/env python3
"""The exporter under slow clients; run through bench/slow_clients.sh (root), which
makes the network namespace this runs in and removes it afterwards.

Starts `tcpdoctor --netns current serve --listen 127.0.0.1:0 --cache 0`, keeps
--clients connections open that each send a partial request one byte every
--byte-every seconds and reconnect as soon as the server drops them, and scrapes
/metrics with curl every --interval seconds (timeout --timeout, as Prometheus's
scrape_timeout). Every --interval it also samples the exporter's VmRSS and thread
count. Prints a Markdown summary and writes the raw samples as JSON (--json-out).

Bounded: the run lasts --minutes; each curl has --max-time; the exporter is stopped
with SIGTERM (then SIGKILL after 15 s) by its pid.
"""

import argparse
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def slope_per_min(points):
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    if den == 0:
        return 0.0
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den * 60.0


class SlowClients:
    """--clients connections, each sending a partial request a byte at a time."""

    REQUEST = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: " + b"a" * 4096

    def __init__(self, addr, count, byte_every):
        self.addr, self.count, self.byte_every = addr, count, byte_every
        self.sel = selectors.DefaultSelector()
        self.conns = {}  # socket -> bytes sent
        self.dropped_by_server = 0
        self.connect_failures = 0
        self.stop = threading.Event()

    def _open(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(self.addr)
        except BlockingIOError:
            pass
        except OSError:
            self.connect_failures += 1
            s.close()
            return
        self.conns[s] = 0
        self.sel.register(s, selectors.EVENT_READ)

    def _close(self, s):
        self.sel.unregister(s)
        del self.conns[s]
        s.close()

    def run(self):
        next_byte = time.monotonic()
        while not self.stop.is_set():
            while len(self.conns) < self.count and not self.stop.is_set():
                self._open()
            for key, _ in self.sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.dropped_by_server += 1
                    self._close(s)
            if time.monotonic() >= next_byte:
                next_byte = time.monotonic() + self.byte_every
                for s in list(self.conns):
                    sent = self.conns[s]
                    try:
                        n = s.send(self.REQUEST[sent : sent + 1])
                        self.conns[s] = min(sent + n, len(self.REQUEST) - 1)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        self.dropped_by_server += 1
                        self._close(s)
        for s in list(self.conns):
            self._close(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/tcpdoctor")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--byte-every", type=float, default=1.0, help="seconds between a slow client's bytes")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes")
    ap.add_argument("--timeout", type=float, default=10.0, help="a scrape's timeout")
    ap.add_argument("--cache", default="0", help="serve --cache")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args()

    serve = subprocess.Popen(
        [a.bin, "--netns", "current", "serve", "--listen", "127.0.0.1:0", "--cache", a.cache],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = []
    addr = None
    deadline = time.monotonic() + 30
    while addr is None and time.monotonic() < deadline:
        line = serve.stderr.readline()
        if not line:
            break
        log.append(line)
        m = re.search(r"listening on http://([\d.]+):(\d+)/", line)
        if m:
            addr = (m.group(1), int(m.group(2)))
    if addr is None:
        serve.kill()
        sys.exit("bench/slow_clients.py: the exporter printed no address: " + "".join(log))
    threading.Thread(target=lambda: log.extend(serve.stderr), daemon=True).start()
    url = f"http://{addr[0]}:{addr[1]}/metrics"

    # Warm-up scrape (the first collection loads the tracer), then the attack.
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", str(a.timeout), url])
    clients = SlowClients(addr, a.clients, a.byte_every)
    attack = threading.Thread(target=clients.run, daemon=True)
    attack.start()

    started = time.monotonic()
    end = started + a.minutes * 60
    scrapes, samples = [], []
    try:
        while time.monotonic() < end:
            tick = time.monotonic()
            r = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "--max-time", str(a.timeout), "-w", "%{http_code} %{time_total}", url],
                capture_output=True,
                text=True,
            )
            parts = r.stdout.split()
            code = int(parts[0]) if parts and parts[0].isdigit() else 0
            took = float(parts[1]) if len(parts) > 1 else a.timeout
            t = tick - started
            scrapes.append({"t": round(t, 1), "code": code, "curl_exit": r.returncode, "s": took})
            samples.append(
                {
                    "t": round(t, 1),
                    "rss_kb": proc_status(serve.pid, "VmRSS"),
                    "threads": proc_status(serve.pid, "Threads"),
                    "clients_open": len(clients.conns),
                }
            )
            time.sleep(max(0.0, a.interval - (time.monotonic() - tick)))
    finally:
        clients.stop.set()
        attack.join(timeout=10)
        serve.send_signal(signal.SIGTERM)
        try:
            code = serve.wait(timeout=15)
        except subprocess.TimeoutExpired:
            serve.kill()
            code = serve.wait()

    ok = [s["s"] for s in scrapes if s["code"] == 200 and s["curl_exit"] == 0]
    failed = [s for s in scrapes if not (s["code"] == 200 and s["curl_exit"] == 0)]
    rss = [(s["t"], s["rss_kb"] / 1024.0) for s in samples if s["rss_kb"]]
    # The slope after the first minute (the first collections fill caches).
    late = [p for p in rss if p[0] >= 60] or rss
    threads = [s["threads"] for s in samples if s["threads"]]
    print(f"| minutes | slow clients | scrapes | failed | p50 | p90 | p99 | max | RSS start / min / max / end (MB) | RSS slope after 1 min | threads max | dropped by the server | exit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {a.minutes:g} | {a.clients} | {len(scrapes)} | {len(failed)} | "
        f"{percentile(ok, 50) * 1000:.1f} ms | {percentile(ok, 90) * 1000:.1f} ms | {percentile(ok, 99) * 1000:.1f} ms | "
        f"{max(ok) * 1000 if ok else float('nan'):.1f} ms | "
        f"{rss[0][1]:.1f} / {min(p[1] for p in rss):.1f} / {max(p[1] for p in rss):.1f} / {rss[-1][1]:.1f} | "
        f"{slope_per_min(late):+.3f} MB/min | {max(threads) if threads else 0} | {clients.dropped_by_server} | {code} |"
    )
    print()
    print("RSS over time (MB): " + ", ".join(f"{p[0] / 60:.0f} min {p[1]:.1f}" for p in rss[:: max(1, len(rss) // 10)]))
    if failed:
        print("failed scrapes: " + json.dumps(failed[:20]))
    print("exporter log (last lines):")
    for line in log[-6:]:
        print("  " + line.rstrip())
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"args": vars(a), "scrapes": scrapes, "samples": samples, "log": log}, f)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
