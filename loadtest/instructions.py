"""Instructions per request under callgrind (`run.py --instructions`): Turnpike's scenarios, the
bare Pingora programs, nginx as a proxy and the peers of peers.py, each counted the same way.

For each target, one process under `valgrind --tool=callgrind`:
  1. start, wait until it routes, 1,000 warm-up requests (oha, 4 keep-alive connections);
  2. `callgrind_control -z` (zero), 4,000 requests, `callgrind_control -d` (dump): I_run, and
     the run's wall time T;
  3. 6 s of quiet, zero, 10 s more with no traffic, dump: I_idle, the background rate
     B = I_idle / 10;
  4. stop it by PID.
Instructions per request = (I_run - B x T) / 4,000: what the target spends on its timers while
the requests run is its idle cost, shown apart, not a cost of the requests. Every answer must be
the status the scenario expects (200, or 429 for the refusing chain). User space only: the kernel
(syscalls, TCP on loopback) is not counted. Repeatable to about 0.1% on a busy machine, which the
timed runs are not.
"""

import datetime
import os
import platform
import re
import signal
import subprocess
import tempfile
import time

import peers
import run

# QUIET is longer than the aggregator's rollup flush (5 s): the idle window starts after the
# last write of the traffic's usage.
WARM, REQUESTS, QUIET, IDLE = 1000, 4000, 6, 10
# The OTLP sink of the telemetry targets.
OTLP_PORT = 18094


def oha(port, n, headers, expect, name, pin=None, request=("/items/42", ())):
    extra = [arg for h in headers for arg in ("-H", h)]
    cpu = ["taskset", "-c", pin] if pin else []
    path, more = request
    res = subprocess.run([*cpu, run.oha_path(), "-n", str(n), "-c", "4", "--no-tui", *extra, *more,
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=900)
    codes = re.findall(r"\[(\d+)\] (\d+) responses", res.stdout)
    if res.returncode != 0 or "Success rate:\t100.00%" not in res.stdout or not codes \
            or any(c not in expect for c, _ in codes):
        run.die(f"{name}: the instruction-count run had failures (answers must be {' or '.join(expect)}):\n"
                f"{res.stdout}{res.stderr}")


def control(flag, pid, name):
    res = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0 or "OK" not in res.stdout:
        run.die(f"{name}: callgrind_control {flag} failed:\n{res.stdout}{res.stderr}")


def dumped(out, n, name):
    """The instruction total of the n-th dump (callgrind names them OUT.1, OUT.2, ...); a dump
    holds what was counted since the previous zeroing or dump."""
    path = f"{out}.{n}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.startswith("totals:"):
                        return int(line.split()[1])
        time.sleep(0.2)
    run.die(f"{name}: no instruction total in {path}")


def count(work, name, target):
    """(instructions per request, background instructions per second) of one target."""
    cmd, port, stop_signal, headers = target[:4]
    env = target[4] if len(target) > 4 else {}
    expect = target[5] if len(target) > 5 else ("200",)
    request = target[6] if len(target) > 6 else ("/items/42", ())
    slug = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    out = os.path.join(work, f"callgrind-{slug}.out")
    log = open(os.path.join(work, f"{slug}.log"), "w")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                            stdout=log, stderr=log, env={**os.environ, **env})
    try:
        if not peers.wait_up(port, proc, timeout=180):
            run.die(f"{name}: nothing routes on 127.0.0.1:{port} under callgrind (see {log.name})")
        oha(port, WARM, headers, expect, name, request=request)
        control("-z", proc.pid, name)
        started = time.monotonic()
        oha(port, REQUESTS, headers, expect, name, request=request)
        took = time.monotonic() - started
        control("-d", proc.pid, name)
        time.sleep(QUIET)
        control("-z", proc.pid, name)
        time.sleep(IDLE)
        control("-d", proc.pid, name)
        busy, idle = dumped(out, 1, name), dumped(out, 2, name)
    finally:
        # Some runtimes do not survive callgrind's signal handling at exit (Go), which no
        # longer matters once the dumps are written.
        peers.stop(proc, stop_signal, 60)
        log.close()
    rate = idle / IDLE
    return (busy - rate * took) / REQUESTS, rate


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


# The "openapi-validate" targets: a query of five parameters, and a 2 KiB JSON order.
VALIDATED_QUERY = "/items/42?status=open&status=paid&sort=total&limit=20&since=2026-12-01T00:00:00Z&mine=true"


def order_body():
    lines = ",".join(f'{{"sku":"ABC-{i:04}","qty":{i + 1},"price":{i * 3}.5,"gift":false}}' for i in range(36))
    return ('{"customer":"6f1c2a4e-8b1d-4c3a-9e2f-0a1b2c3d4e5f","currency":"EUR","email":"buyer@example.com",'
            f'"note":"leave at the door","lines":[{lines}]}}')


def with_validation(config):
    """The full chain with [apis.openapi] validation against loadtest/openapi-validate.yaml."""
    spec = os.path.join(run.ROOT, "loadtest", "openapi-validate.yaml")
    return config.replace('[apis.auth]\n', f'[apis.catalog]\nopenapi = "{spec}"\n[apis.openapi]\nroutes = true\n'
                          'validate = "request"\n[apis.auth]\n', 1)


def targets(work):
    """Every target's (command, port, stop signal, headers[, env[, expected statuses[, (path,
    oha arguments)]]])."""
    cfg = lambda name, text: write(os.path.join(work, f"{name}.toml"), text)
    plain = cfg("turnpike", run.scenario_config("plain-proxy"))
    chain_text = run.scenario_config("full-chain")
    # The same chain with a quota of 1 a month: every request but the first is a 429.
    refused = chain_text.replace('quotas = ["1000000000/hour", "1000000000/month"]', 'quotas = ["1/month"]')
    no_log = chain_text.replace(f'access_log = "{run.ACCESS_LOG}"\n', "", 1)
    telemetry = lambda ratio: (f'\n[telemetry]\notlp_endpoint = "http://127.0.0.1:{OTLP_PORT}"\n'
                               f'sample_ratio = {ratio}\n')
    binary = os.path.join(run.ROOT, "target", "release", "turnpike")
    floor = os.path.join(run.ROOT, "target", "release", "examples", "pingora-floor")
    key = (f"x-api-key: {run.LOADTEST_KEY}",)
    tp = lambda path, headers=(), *more: ([binary, "run", "-c", path], run.TURNPIKE_PORT, signal.SIGINT,
                                          headers, *more)
    out = {
        "nginx-proxy": (["nginx", "-c", write(os.path.join(work, "nginx-proxy.conf"), run.proxy_conf(work)),
                         "-p", work], run.PROXY_PORT, signal.SIGQUIT, ()),
        "pingora floor (proxy)": ([floor, f"127.0.0.1:{run.FLOOR_PORT}", "--proxy", f"127.0.0.1:{run.BACKEND_PORT}"],
                                  run.FLOOR_PORT, signal.SIGINT, ()),
        "pingora floor (static answer)": ([floor, f"127.0.0.1:{run.FLOOR_PORT}"], run.FLOOR_PORT, signal.SIGINT, ()),
        "turnpike": tp(plain),
        "turnpike (api-key auth)": tp(cfg("turnpike-api-key", run.scenario_config("api-key-auth")), key),
        "turnpike (full chain)": tp(cfg("turnpike-full-chain", chain_text), key),
        # The "no access log" row: the same chain without its JSON access log.
        "turnpike (full chain, no access log)": tp(cfg("turnpike-full-chain-no-log", no_log), key),
        # The same chain exporting OpenTelemetry to a local sink (loadtest/otlp_sink.py): every
        # request traced (server + client span), and 1% of them (the usual production ratio).
        "turnpike (full chain, no access log, every request traced)": tp(cfg(
            "turnpike-full-chain-traced", no_log + telemetry(1.0)), key),
        "turnpike (full chain, no access log, 1% traced)": tp(cfg(
            "turnpike-full-chain-traced-1pct", no_log + telemetry(0.01)), key),
        "turnpike (full chain, 429 answers)": tp(cfg("turnpike-429", refused.replace(
            "/tmp/turnpike-loadtest.db", os.path.join(work, "refused.db"))), key, {}, ("200", "429")),
        # openapi-validate: the same chain, validating the request against an OpenAPI document.
        "turnpike (full chain, no access log, openapi-validate: query of 5 parameters)": tp(cfg(
            "turnpike-validate-query", with_validation(no_log)), key, {}, ("200",), (VALIDATED_QUERY, ())),
        "turnpike (full chain, no access log, openapi-validate: 2 KiB JSON body)": tp(cfg(
            "turnpike-validate-body", with_validation(no_log)), key, {}, ("200",),
            ("/items", ("-m", "POST", "-T", "application/json", "-d", order_body()))),
        "turnpike (full chain, no access log, 2 KiB JSON body, not validated)": tp(cfg(
            "turnpike-body-no-validation", no_log), key, {}, ("200",),
            ("/items", ("-m", "POST", "-T", "application/json", "-d", order_body()))),
        "turnpike (cache hits)": tp(cfg("turnpike-cache-hit", run.scenario_config("cache-hit"))),
        "turnpike (static answer)": tp(cfg("turnpike-static-respond", run.scenario_config("static-respond"))),
    }
    return out, key


def peer_targets(work, present, key):
    out = {}
    sub = lambda name: os.makedirs(os.path.join(work, name), exist_ok=True) or os.path.join(work, name)
    if "nginx + Lua" in present:
        out["nginx + Lua (key digest, 3 windows, RateLimit fields, counters, histogram)"] = (
            peers.lua_command(sub("lua"), run.BACKEND_PORT, run.LOADTEST_KEY)[:3] + (key,))
    if "traefik" in present:
        cmd, port, sig, env = peers.traefik_command(sub("traefik"), run.BACKEND_PORT, chain=False)
        out["traefik"] = (cmd, port, sig, (), env)
        cmd, port, sig, env = peers.traefik_command(sub("traefik-chain"), run.BACKEND_PORT, chain=True)
        out["traefik (3 rate limits by key, Prometheus metrics)"] = (cmd, port, sig, key, env)
    if "pingap" in present:
        out["pingap"] = peers.pingap_command(sub("pingap"), run.BACKEND_PORT, run.LOADTEST_KEY)[:3] + ((),)
        # The yardstick is the chain without pingap's X-RateLimit fields; with them it
        # does more of what Turnpike's chain does (which always sends RateLimit fields).
        out["pingap (key_auth + 3 limits)"] = (
            peers.pingap_command(sub("pingap-chain"), run.BACKEND_PORT, run.LOADTEST_KEY, chain=True,
                                 limit_headers=False)[:3] + (key,))
        out["pingap (key_auth + 3 limits, X-RateLimit fields)"] = (
            peers.pingap_command(sub("pingap-chain-fields"), run.BACKEND_PORT, run.LOADTEST_KEY, chain=True)[:3]
            + (key,))
        out["pingap (cache hits)"] = (
            peers.pingap_command(sub("pingap-cache"), run.BACKEND_PORT, run.LOADTEST_KEY, cache=True)[:3] + ((),))
    return out


def main(record, only=None):
    run.need("valgrind", "valgrind")
    run.need("nginx", "nginx-light")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "turnpike", "--example", "pingora-floor"],
                   cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="turnpike-instructions-")
    absent = peers.missing()
    for name, install in absent.items():
        print(f"peer {name} is not installed and is left out of this run ({install})")
    present = [n for n in ("nginx + Lua", "traefik", "pingap") if n not in absent]
    proofs = os.path.join(work, "proofs")
    os.makedirs(proofs)
    failures = peers.prove(proofs, present, run.LOADTEST_KEY)
    if failures:
        run.die("a peer's chain does not do what the report says it does:\n" + "\n".join(failures))
    all_targets, key = targets(work)
    all_targets.update(peer_targets(work, present, key))
    if only:
        all_targets = {n: t for n, t in all_targets.items() if any(o in n for o in only)}
    sink = subprocess.Popen(["python3", os.path.join(run.ROOT, "loadtest", "otlp_sink.py"), str(OTLP_PORT)],
                            stdout=open(os.path.join(work, "otlp-sink.log"), "w"), stderr=subprocess.STDOUT)
    backend = subprocess.Popen(["nginx", "-c", write(os.path.join(work, "backend.conf"), run.backend_conf(work)),
                                "-p", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    per_request, idle = {}, {}
    try:
        run.wait_port(run.BACKEND_PORT)
        for name, target in all_targets.items():
            per_request[name], idle[name] = count(work, name, target)
            print(f"{name}: {per_request[name]:,.0f} instructions/request, idle {idle[name]:,.0f}/s", flush=True)
    finally:
        peers.stop(backend, signal.SIGQUIT, 10)
        peers.stop(sink, signal.SIGTERM, 10)
        run.remove_access_log()
    report = render(per_request, idle, present)
    print(report)
    if record:
        with open(os.path.join(run.ROOT, "loadtest", "RESULTS.md"), "a") as f:
            f.write(report)


def render(per_request, idle, present):
    binary = os.path.join(run.ROOT, "target", "release", "turnpike")
    if "nginx-proxy" not in per_request or "pingora floor (proxy)" not in per_request:
        # A run of some targets only (--only): their numbers, without the ratios.
        rows = [f"| {n} | {v:,.0f} | {idle[n]:,.0f} |" for n, v in per_request.items()]
        return (f"\n## {datetime.date.today().isoformat()} {platform.node()} (instruction counts, some targets)\n\n"
                "| target | instructions/request | background, instructions/s |\n|---|---|---|\n"
                + "\n".join(rows) + "\n")
    nginx = per_request["nginx-proxy"]
    floor = per_request["pingora floor (proxy)"]
    lines = ["\n### instructions per request (callgrind)\n",
             f"`GET /items/42` over 4 keep-alive connections: {WARM:,} warm-up requests, counters zeroed, "
             f"{REQUESTS:,} requests counted, minus the target's own background rate over the run's time "
             f"(measured after {QUIET} s of quiet, over {IDLE} s with no traffic). User space only.\n",
             "| target | instructions/request | vs nginx | vs Pingora floor (proxy) | background, instructions/s |",
             "|---|---|---|---|---|"]
    for name, value in per_request.items():
        lines.append(f"| {name} | {value:,.0f} | {value / nginx:.2f} | {value / floor:.2f} | {idle[name]:,.0f} |")
    lines += ["", "Targets of issue 17 (instructions per request unless said):", ""]
    lines += [f"- {t}" for t in verdicts(per_request, idle)]
    tool = lambda *cmd: subprocess.run(list(cmd), capture_output=True, text=True)
    return (f"\n## {datetime.date.today().isoformat()} {platform.node()} (instruction counts)\n\n"
            f"- {tool('valgrind', '--version').stdout.strip()}, {tool('nginx', '-v').stderr.strip()}, "
            f"turnpike {tool(binary, '--version').stdout.strip()} (release)"
            + "".join(f", {peers.version(n)}" for n in present) + "\n"
            + "\n".join(lines) + "\n")


def verdicts(per_request, idle):
    """Each target of the cost issue with its measured value, marked met or not (or not
    measurable in this run when a peer is missing)."""
    def line(what, value, limit, basis):
        if value is None or limit is None:
            return f"{what}: not measured in this run ({basis} missing)"
        mark = "met" if value <= limit else "not met"
        return f"{what}: {value:,.0f} against at most {limit:,.0f} ({basis}): **{mark}**"
    get = per_request.get
    floor, pingap_chain, pingap_cache = get("pingora floor (proxy)"), get("pingap (key_auth + 3 limits)"), get("pingap (cache hits)")
    chain, logged = get("turnpike (full chain, no access log)"), get("turnpike (full chain)")
    return [
        line("plain proxy", get("turnpike"), floor and 1.12 * floor, "1.12x the bare Pingora proxy"),
        line("full chain, no access log", chain, pingap_chain and 1.15 * pingap_chain,
             "1.15x pingap's key_auth + 3 limits"),
        line("(the same against pingap's chain with its X-RateLimit fields)", chain,
             get("pingap (key_auth + 3 limits, X-RateLimit fields)") and 1.15 * get(
                 "pingap (key_auth + 3 limits, X-RateLimit fields)"), "1.15x that chain"),
        line("the JSON access-log line", logged and chain and logged - chain, 5000,
             "full chain with the log minus without"),
        line("cache hit", get("turnpike (cache hits)"), pingap_cache and 0.8 * pingap_cache,
             "0.8x pingap's cache hit"),
        line("idle after traffic, instructions per second (plain proxy)", idle.get("turnpike"), 100_000, "fixed"),
        line("idle after traffic, instructions per second (full chain)", idle.get("turnpike (full chain)"),
             100_000, "fixed"),
    ]
