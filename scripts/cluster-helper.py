#!/usr/bin/env python3
"""Client load and tagged backends for scripts/cluster.sh (Python 3 standard library only).

  backends ADDR=NAME...   serve each ADDR; every accepted connection first gets one line
                          "NAME PEER_IP\\n" (PEER_IP is the LB the connection came through),
                          then every line it sends is echoed back.
  agree ...               for every client IP x source port, connect to the VIP, read the
                          greeting; prints one JSON object: the flows, and per client IP the
                          set of backends it reached.
  load ...                a paced connect loop from random client IPs, plus HELD connections
                          that each send a line every PING seconds and expect it back; prints
                          one JSON report (outcomes, with epoch-ms times of every failure and
                          of every held connection's end).
"""
import argparse
import errno
import json
import random
import select
import socket
import socketserver
import sys
import threading
import time


def now_ms():
    return int(time.time() * 1000)


# ---------------------------------------------------------------- backends


def backends(specs):
    servers = []
    for spec in specs:
        addr, name = spec.split("=")
        host, port = addr.rsplit(":", 1)

        class Handler(socketserver.StreamRequestHandler):
            tag = name

            def handle(self):
                try:
                    self.wfile.write(("%s %s\n" % (self.tag, self.client_address[0])).encode())
                    for line in self.rfile:
                        self.wfile.write(line)
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 1024

        srv = Server((host, int(port)), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    print("listening", flush=True)
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------- client side


def classify(e):
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, OSError) and e.errno == errno.EHOSTUNREACH:
        return "unreachable"
    if isinstance(e, EOFError):
        return "eof"
    return type(e).__name__


def read_line(s, deadline):
    buf = b""
    while not buf.endswith(b"\n"):
        s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = s.recv(256)
        if not chunk:
            raise EOFError("closed before a full line")
        buf += chunk
    return buf.decode().strip()


def one_connect(vip, port, src, timeout):
    """(backend, lb) of one short connection from src (ip, port)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(src)
        s.settimeout(timeout)
        s.connect((vip, port))
        name, lb = read_line(s, time.monotonic() + timeout).split()
        return name, lb
    finally:
        s.close()


def agree(a):
    flows = []
    lock = threading.Lock()
    work = [(ip, a.sport_base + j) for ip in a.ips for j in range(a.ports)]
    errors = {}

    def worker():
        while True:
            with lock:
                if not work:
                    return
                ip, sport = work.pop()
            try:
                name, lb = one_connect(a.vip, a.port, (ip, sport), a.timeout)
                with lock:
                    flows.append([ip, sport, name, lb])
            except Exception as e:  # counted, reported
                with lock:
                    errors[classify(e)] = errors.get(classify(e), 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_ip = {}
    lbs = {}
    for ip, _, name, lb in flows:
        per_ip.setdefault(ip, set()).add(name)
        lbs[lb] = lbs.get(lb, 0) + 1
    one = sum(1 for v in per_ip.values() if len(v) == 1)
    print(json.dumps({"flows": flows, "errors": errors, "ips": len(per_ip),
                      "ips_one_backend": one, "per_lb": lbs}))


class Held:
    def __init__(self, s, name, lb):
        self.s, self.name, self.lb = s, name, lb
        self.end = None  # (kind, epoch ms)
        self.pending = False
        self.buf = b""


def open_held(a, n):
    held = []
    for _ in range(n):
        ip = random.choice(a.ips)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((ip, 0))
            s.settimeout(a.timeout)
            s.connect((a.vip, a.port))
            name, lb = read_line(s, time.monotonic() + a.timeout).split()
            s.setblocking(False)
            held.append(Held(s, name, lb))
        except Exception:
            s.close()
    return held


def ping_round(held, ping_deadline):
    for h in held:
        if h.end:
            continue
        try:
            h.s.send(b"p\n")
            h.pending = True
        except Exception as e:
            h.end = (classify(e), now_ms())
    while time.monotonic() < ping_deadline:
        live = [h for h in held if not h.end and h.pending]
        if not live:
            return
        r, _, _ = select.select([h.s for h in live], [], [], max(0, ping_deadline - time.monotonic()))
        for h in live:
            if h.s not in r:
                continue
            try:
                chunk = h.s.recv(256)
                if not chunk:
                    h.end = ("eof", now_ms())
                    continue
                h.buf += chunk
                if h.buf.endswith(b"\n"):
                    h.buf = b""
                    h.pending = False
            except BlockingIOError:
                pass
            except Exception as e:
                h.end = (classify(e), now_ms())


def load(a):
    held = open_held(a, a.held)
    stop_at = time.monotonic() + a.duration
    lock = threading.Lock()
    # slow: connects that took over 0.9 s (a lost SYN is retransmitted after 1 s)
    out = {"ok": 0, "failed": {}, "fail_times": [], "per_lb": {}, "per_lb_first_ms": {},
           "slow": 0, "max_ms": 0}

    def connector():
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                _, lb = one_connect(a.vip, a.port, (random.choice(a.ips), 0), a.timeout)
                took = int((time.monotonic() - t0) * 1000)
                with lock:
                    out["ok"] += 1
                    out["max_ms"] = max(out["max_ms"], took)
                    out["slow"] += took >= 900
                    out["per_lb"][lb] = out["per_lb"].get(lb, 0) + 1
                    out["per_lb_first_ms"].setdefault(lb, now_ms())
            except Exception as e:
                k = classify(e)
                with lock:
                    out["failed"][k] = out["failed"].get(k, 0) + 1
                    out["fail_times"].append(now_ms())
            time.sleep(max(0, a.pace - (time.monotonic() - t0)))

    threads = [threading.Thread(target=connector) for _ in range(a.threads)]
    for t in threads:
        t.start()
    if a.ready_file:
        with open(a.ready_file, "w") as f:
            f.write("%d\n" % len(held))
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        ping_round(held, t0 + a.ping)
        time.sleep(max(0, a.ping - (time.monotonic() - t0)))
    ping_round(held, time.monotonic() + a.ping)  # a last check of every held connection
    for t in threads:
        t.join()
    out["held"] = [[h.lb, h.name, h.end[0] if h.end else "open", h.end[1] if h.end else 0]
                   for h in held]
    for h in held:
        h.s.close()
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backends")
    b.add_argument("specs", nargs="+")
    for name in ("agree", "load"):
        c = sub.add_parser(name)
        c.add_argument("--vip", required=True)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--ips", required=True, help="comma-separated client addresses")
        # Longer than the multi-second stalls this kind of shared box has, so a late answer
        # is not counted as a failure; host_loss sets 3 s, where timeouts are the figure.
        c.add_argument("--timeout", type=float, default=10.0)
        c.add_argument("--threads", type=int, default=8)
        if name == "agree":
            c.add_argument("--ports", type=int, default=20)
            c.add_argument("--sport-base", type=int, default=41000)
        else:
            c.add_argument("--duration", type=float, required=True)
            c.add_argument("--held", type=int, default=0)
            c.add_argument("--ping", type=float, default=0.5)
            c.add_argument("--pace", type=float, default=0.02, help="seconds per connect per thread")
            c.add_argument("--ready-file")
    a = p.parse_args()
    if a.cmd == "backends":
        backends(a.specs)
    a.ips = a.ips.split(",")
    agree(a) if a.cmd == "agree" else load(a)


if __name__ == "__main__":
    main()
