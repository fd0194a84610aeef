#!/usr/bin/env python3
"""Turnpike load-test harness.

Runs, on 127.0.0.1 only, a fixed fast backend (nginx, one process, small body from memory), nginx
as a plain reverse proxy (one process, upstream keep-alive) and Turnpike (release build), pins
the load generator to CPU 0 and the servers to CPU 1, and for every scenario measures the direct
backend, nginx-as-proxy and Turnpike in the same run: req/s, p50/p99 latency, CPU microseconds
per request of each process (utime+stime from /proc/PID/stat around the measured window), and
new upstream connections per request (the backend's accepted-connection counter). Every load
loop is bounded (warm-up + measured window) and only the processes started here are stopped,
by PID. Results are printed as Markdown tables and appended to loadtest/RESULTS.md with --record.

Usage: python3 loadtest/run.py [--scenario NAME ...] [--duration 10] [--record]
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND_PORT, PROXY_PORT, TURNPIKE_PORT, ADMIN_PORT = 18081, 18082, 18090, 19990
# The framework's floor (loadtest/pingora_floor.rs: bare Pingora answering from request_filter).
FLOOR_PORT = 18091
TICK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, LOAD_CPU = "1", "0"
# The key of the api-key-auth scenario's consumer (its digest is in api-key-auth.toml).
LOADTEST_KEY = "tpk_loadtestloadtestloadtestloadte000000"
SMALL_BODY = '{"id":42,"name":"widget","price":9.99,"tags":["a","b"]}'


def die(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def need(tool, package):
    if shutil.which(tool):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {package}")
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, stdout=subprocess.DEVNULL)
        return
    die(f"{tool} is missing: run 'sudo apt-get install -y {package}' and try again")


def oha_path():
    for cand in [shutil.which("oha"), os.path.expanduser("~/.cargo/bin/oha"), "/tmp/oha-root/bin/oha"]:
        if cand and os.path.exists(cand):
            return cand
    print("installing oha (fixed-rate load generator) with cargo; this takes a few minutes once")
    subprocess.run(["cargo", "install", "oha", "--locked"], check=True)
    return os.path.expanduser("~/.cargo/bin/oha")


def cpu_ticks(pid):
    """(utime, stime) of a process in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.1)
    die(f"nothing answers on 127.0.0.1:{port}")


def accepts():
    with urllib.request.urlopen(f"http://127.0.0.1:{BACKEND_PORT}/nginx_status", timeout=2) as r:
        text = r.read().decode()
    return int(text.splitlines()[2].split()[0])


def backend_conf(work):
    """The fixed backend: nginx, one process, small body from memory, a 100 KiB file."""
    big = os.path.join(work, "big.json")
    with open(big, "w") as f:
        f.write('{"blob":"' + "x" * (100 * 1024 - 12) + '"}')
    return f"""
master_process off; daemon off; worker_processes 1; pid {work}/backend.pid;
error_log {work}/backend-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  open_file_cache max=10; sendfile on;
  server {{
    listen 127.0.0.1:{BACKEND_PORT} backlog=4096;
    location = /nginx_status {{ stub_status; }}
    location /big {{ default_type application/json; alias {big}; }}
    location / {{ default_type application/json; return 200 '{SMALL_BODY}'; }}
  }}
}}"""


def proxy_conf(work):
    """nginx as a plain reverse proxy with upstream keep-alive: the yardstick."""
    return f"""
master_process off; daemon off; worker_processes 1; pid {work}/proxy.pid;
error_log {work}/proxy-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{PROXY_PORT} backlog=4096;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}"""


class Servers:
    """The backend, nginx-as-proxy and Turnpike, each started here and stopped by PID."""

    def __init__(self, work, turnpike_config):
        self.work = work
        self.procs = {}
        backend, proxy = backend_conf(work), proxy_conf(work)
        self.start_nginx("backend", backend)
        self.start_nginx("nginx-proxy", proxy)
        wait_port(BACKEND_PORT)
        wait_port(PROXY_PORT)
        self.start_turnpike(turnpike_config)

    def start_nginx(self, name, conf):
        path = os.path.join(self.work, f"{name}.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.procs[name] = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, "nginx", "-c", path, "-p", self.work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_turnpike(self, config_text):
        path = os.path.join(self.work, "turnpike.toml")
        with open(path, "w") as f:
            f.write(config_text)
        binary = os.path.join(ROOT, "target", "release", "turnpike")
        check = subprocess.run([binary, "check", "-c", path], capture_output=True, text=True)
        if check.returncode != 0:
            die(check.stderr)
        log = open(os.path.join(self.work, "turnpike.log"), "w")
        self.procs["turnpike"] = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, binary, "run", "-c", path],
            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
        wait_port(TURNPIKE_PORT)

    def start_floor(self):
        """The bare Pingora program (built by main() with the release profile), once per run."""
        if "pingora-floor" in self.procs:
            return
        binary = os.path.join(ROOT, "target", "release", "examples", "pingora-floor")
        self.procs["pingora-floor"] = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, binary, f"127.0.0.1:{FLOOR_PORT}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        wait_port(FLOOR_PORT)

    def restart_turnpike(self, config_text):
        self.stop("turnpike")
        time.sleep(0.3)
        self.start_turnpike(config_text)

    def pid(self, name):
        return self.procs[name].pid

    def stop(self, name):
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal({"turnpike": signal.SIGINT, "pingora-floor": signal.SIGINT,
                           "redis": signal.SIGTERM}.get(name, signal.SIGQUIT))
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)


def parse_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(url, duration, conn_close, headers=()):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{duration}s", "--latency", url]
    if conn_close:
        cmd[5:5] = ["-H", "Connection: close"]
    for h in headers:
        cmd[5:5] = ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    req = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # Anchored at the line start: "75.50%" in the Stdev column must not match.
    p50 = parse_ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"requests": req, "rps": rps, "p50": p50, "p99": p99,
            "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def run_oha(url, duration, rate):
    cmd = ["taskset", "-c", LOAD_CPU, oha_path(), "-z", f"{duration}s", "-q", str(rate), "-c", "64",
           "--latency-correction", "--no-tui", "--output-format", "json", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    ok = sum(v for k, v in data.get("statusCodeDistribution", {}).items() if k.startswith("2"))
    return {"requests": ok, "rps": data["summary"]["requestsPerSec"], "p50": pct["p50"] * 1000,
            "p99": pct["p99"] * 1000, "non2xx": sum(data.get("statusCodeDistribution", {}).values()) - ok,
            "socket_errors": json.dumps(data.get("errorDistribution", {})) if data.get("errorDistribution") else ""}


def measure(servers, target, path, duration, conn_close=False, rate=None, headers=()):
    port = {"backend": BACKEND_PORT, "nginx-proxy": PROXY_PORT, "turnpike": TURNPIKE_PORT,
            "pingora-floor": FLOOR_PORT}[target]
    url = f"http://127.0.0.1:{port}{path}"
    warm = max(2, duration // 5)
    (run_oha(url, warm, rate) if rate else run_wrk(url, warm, conn_close, headers))
    names = ["backend"] + ([target] if target != "backend" else [])
    if target == "turnpike" and "redis" in servers.procs:
        names.append("redis")
    before = {n: cpu_ticks(servers.pid(n)) for n in names}
    acc0 = accepts()
    res = run_oha(url, duration, rate) if rate else run_wrk(url, duration, conn_close, headers)
    acc1 = accepts() - 1  # the status request itself
    after = {n: cpu_ticks(servers.pid(n)) for n in names}
    n = max(res["requests"], 1)
    res["cpu_us"] = {k: (sum(after[k]) - sum(before[k])) * 1e6 / TICK / n for k in names}
    # The same split into user space and kernel (syscalls, TCP on loopback, scheduler).
    res["user_sys_us"] = {k: tuple((a - b) * 1e6 / TICK / n for a, b in zip(after[k], before[k]))
                          for k in names}
    res["new_upstream_conns_per_req"] = (acc1 - acc0) / n if target in ("nginx-proxy", "turnpike") else None
    return res


def routes_config(n_apis):
    parts = [base_config("")]
    for i in range(n_apis):
        parts.append(f"""
[[apis]]
name = "svc{i}"
version = "v1"
base_path = "/svc{i}/v1"
upstream = "backend"
strip_base_path = true
[[apis.routes]]
path = "/items"
methods = ["GET", "POST"]
[[apis.routes]]
path = "/items/{{id}}"
methods = ["GET"]
""")
    return "".join(parts)


def base_config(apis):
    return f"""
[server]
listen = ["127.0.0.1:{TURNPIKE_PORT}"]
threads = 1
pid_file = "/tmp/turnpike-loadtest.pid"
upgrade_sock = "/tmp/turnpike-loadtest-upgrade.sock"

[admin]
listen = "127.0.0.1:{ADMIN_PORT}"

[store]
path = "/tmp/turnpike-loadtest.db"

[upstreams.backend]
targets = [ {{ addr = "127.0.0.1:{BACKEND_PORT}" }} ]
idle_timeout = "50s"
{apis}"""


# The full-chain scenario's access log (analytics as in production); removed after a run.
ACCESS_LOG = "/tmp/turnpike-loadtest-access.log"


def remove_access_log():
    if os.path.exists(ACCESS_LOG):
        os.remove(ACCESS_LOG)


def scenario_config(name):
    """The scenario configs kept in loadtest/ (ports rewritten to this harness's)."""
    with open(os.path.join(ROOT, "loadtest", f"{name}.toml")) as f:
        return f.read()


SCENARIOS = {
    # name: (turnpike config, request path, options)
    "plain-proxy": (lambda: scenario_config("plain-proxy"), "/items/42", {}),
    "10k-routes": (lambda: scenario_config("10k-routes"), "/svc4999/v1/items/42", {}),
    "100KiB-response": (lambda: scenario_config("plain-proxy"), "/big", {}),
    "connection-per-request": (lambda: scenario_config("plain-proxy"), "/items/42", {"conn_close": True}),
    "fixed-rate-2000": (lambda: scenario_config("plain-proxy"), "/items/42", {"rate": 2000}),
    "api-key-auth": (lambda: scenario_config("api-key-auth"), "/items/42",
                     {"headers": [f"x-api-key: {LOADTEST_KEY}"]}),
    "full-chain": (lambda: scenario_config("full-chain"), "/items/42",
                   {"headers": [f"x-api-key: {LOADTEST_KEY}"]}),
    # Every request after the first answered from the edge cache (nginx still proxies). "floor":
    # the bare Pingora program answers the same request in the same run.
    "cache-hit": (lambda: scenario_config("cache-hit"), "/items/42", {"floor": True}),
    # The gateway answering by itself: the floor under any answer, cache hits included.
    "static-respond": (lambda: scenario_config("static-respond"), "/items/42", {"floor": True}),
    # The same chain with the fleet's store in a local redis-server started here (batched
    # leases, then one Redis script run per request with a strict plan).
    "full-chain-redis": (lambda: with_redis(scenario_config("full-chain"), strict=False), "/items/42",
                         {"headers": [f"x-api-key: {LOADTEST_KEY}"], "redis": True}),
    "full-chain-redis-strict": (lambda: with_redis(scenario_config("full-chain"), strict=True), "/items/42",
                                {"headers": [f"x-api-key: {LOADTEST_KEY}"], "redis": True}),
}

REDIS_PORT = 16379


def with_redis(config, strict):
    """A scenario config pointed at the harness's redis-server."""
    config = config.replace('[store]\n', f'[store]\nredis_url = "redis://127.0.0.1:{REDIS_PORT}"\n'
                            'redis_prefix = "turnpike-loadtest:"\n', 1)
    if strict:
        config = config.replace("[plans.loadtest]\n", '[plans.loadtest]\nexactness = "strict"\n', 1)
    return config


def start_redis(work):
    """A redis-server on loopback without persistence, on the servers' CPU; stopped by PID."""
    need("redis-server", "redis-server")
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, "redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=1).close()
            return proc
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                die(f"redis-server did not start on 127.0.0.1:{REDIS_PORT}")
            time.sleep(0.1)


def fmt_row(target, r, base):
    cpu = r["cpu_us"]
    own = cpu.get(target, cpu["backend"])
    user, system = r["user_sys_us"].get(target, r["user_sys_us"]["backend"])
    conns = "" if r["new_upstream_conns_per_req"] is None else f"{r['new_upstream_conns_per_req']:.4f}"
    ratio_backend = r["rps"] / base["backend"]["rps"] if base.get("backend") else float("nan")
    ratio_nginx = (own / base["nginx-proxy"]["cpu_us"]["nginx-proxy"]
                   if target in ("turnpike", "pingora-floor") and base.get("nginx-proxy") else None)
    errors = r["non2xx"] + (1 if r["socket_errors"] else 0)
    return (f"| {target} | {r['rps']:,.0f} | {r['p50']:.3f} | {r['p99']:.3f} | {own:.1f} | {user:.1f} / {system:.1f} | "
            f"{cpu['backend']:.1f} | "
            f"{conns} | {ratio_backend:.2f} | {'' if ratio_nginx is None else f'{ratio_nginx:.2f}'} | "
            f"{r['non2xx']} {r['socket_errors']} |")


def write_routes_file():
    """Writes loadtest/10k-routes.toml: 5,000 APIs of two routes each in front of the backend."""
    text = "# Load-test scenario \"10,000 routes\": 5,000 APIs with two routes each (written by\n# `python3 loadtest/run.py --write-routes`).\n" + routes_config(5000)
    with open(os.path.join(ROOT, "loadtest", "10k-routes.toml"), "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="run only these")
    ap.add_argument("--duration", type=int, default=10, help="measured window in seconds (default 10)")
    ap.add_argument("--record", action="store_true", help="append the tables to loadtest/RESULTS.md")
    ap.add_argument("--write-routes", action="store_true", help="rewrite loadtest/10k-routes.toml and exit")
    ap.add_argument("--instructions", action="store_true",
                    help="count instructions per request under callgrind (each scenario and the Pingora floor) instead of timing")
    ap.add_argument("--cpu", action="store_true",
                    help="timed CPU per request of the same targets and peers, natively, as ratios to nginx and nginx + Lua")
    ap.add_argument("--only", action="append",
                    help="with --instructions: count only the targets whose name contains this text")
    args = ap.parse_args()
    if args.cpu:
        import cputime
        cputime.main(args.record)
        return
    if args.write_routes:
        write_routes_file()
        return
    if args.instructions:
        import instructions
        instructions.main(args.record, args.only)
        return
    need("nginx", "nginx-light")
    need("wrk", "wrk")
    need("taskset", "util-linux")
    if os.cpu_count() < 2:
        die("the harness pins the load generator and the servers to separate CPUs: it needs 2")
    names = args.scenario or list(SCENARIOS)
    if "fixed-rate-2000" in names:
        oha_path()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "turnpike", "--example", "pingora-floor"],
                   cwd=ROOT, check=True)

    load_before = os.getloadavg()
    lines = []
    work = tempfile.mkdtemp(prefix="turnpike-loadtest-")
    redis = start_redis(work) if any(SCENARIOS[n][2].get("redis") for n in names) else None
    servers = Servers(work, SCENARIOS[names[0]][0]())
    if redis is not None:
        servers.procs["redis"] = redis
    try:
        current = None
        for name in names:
            make_config, path, opts = SCENARIOS[name]
            config = make_config()
            if config != current:
                servers.restart_turnpike(config)
                current = config
            results = {}
            targets = ["backend", "nginx-proxy", "turnpike"]
            if opts.get("floor"):
                servers.start_floor()
                targets.append("pingora-floor")
            for target in targets:
                results[target] = measure(servers, target, path, args.duration, opts.get("conn_close", False),
                                          opts.get("rate"), opts.get("headers", ()))
            lines.append(f"\n### {name}\n")
            lines.append(f"`GET {path}`, 64 connections{', Connection: close' if opts.get('conn_close') else ''}"
                         f"{', header ' + opts['headers'][0].split(':')[0] if opts.get('headers') else ''}"
                         f"{', ' + str(opts['rate']) + ' req/s fixed rate (oha, latency-corrected)' if opts.get('rate') else ' (wrk, 1 thread)'}"
                         f", {args.duration} s measured after a warm-up.\n")
            lines.append("| target | req/s | p50 ms | p99 ms | CPU us/req (this process) | user / sys us/req | CPU us/req (backend) | new upstream conns/req | req/s vs backend | CPU vs nginx | non-2xx / socket errors |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for target in targets:
                lines.append(fmt_row(target, results[target], results))
            if "redis" in results["turnpike"]["cpu_us"]:
                lines.append(f"\nredis-server CPU while Turnpike was measured: "
                             f"{results['turnpike']['cpu_us']['redis']:.1f} us/req.")
            print("\n".join(lines[-(len(targets) + 2):]), flush=True)
    finally:
        servers.stop_all()
        remove_access_log()
    load_after = os.getloadavg()

    header = (f"\n## {datetime.date.today().isoformat()} {platform.node()}\n\n"
              f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, kernel {platform.release()}\n"
              f"- tools: {subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}, "
              f"{subprocess.run(['wrk', '--version'], capture_output=True, text=True).stdout.splitlines()[0].split(' Copyright')[0]}"
              f"{', oha ' + subprocess.run([oha_path(), '--version'], capture_output=True, text=True).stdout.strip() if 'fixed-rate-2000' in names else ''}, "
              f"turnpike {subprocess.run([os.path.join(ROOT, 'target/release/turnpike'), '--version'], capture_output=True, text=True).stdout.strip()} (release)\n"
              f"- load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}; load generator on CPU {LOAD_CPU}, servers on CPU {SERVER_CPU}\n")
    report = header + "\n".join(lines) + "\n"
    print(report)
    if args.record:
        with open(os.path.join(ROOT, "loadtest", "RESULTS.md"), "a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
