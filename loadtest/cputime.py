"""Timed CPU per request (`run.py --cpu`): the targets of the instruction count (instructions.py:
Turnpike's scenarios, nginx as a proxy, the bare Pingora proxy and the peers of peers.py), each
run natively, not under callgrind, so that the kernel's share (syscalls, TCP on loopback) and
the caches count too.

Each round starts every target in turn, pinned to CPU 1 with the backend (the load generator
runs on CPU 0), sends 2,000 warm-up requests, then 40,000 over 4 keep-alive connections (oha)
and reads the target's CPU time (utime + stime from /proc/PID/stat, clock ticks) around them.
Every answer must be the status the scenario expects. Three rounds; the table gives each
target's median and its ratio to nginx and to the nginx + Lua chain of the same round, then the
median of those ratios: timed CPU is noisy on a shared machine, ratios within one round much
less so. Everything listens on 127.0.0.1; each process is stopped here, by PID.
"""

import datetime
import os
import platform
import signal
import statistics
import subprocess
import tempfile

import instructions
import peers
import run

WARM, REQUESTS, ROUNDS = 2000, 40000, 3
LUA = "nginx + Lua (key digest, 3 windows, RateLimit fields, counters, histogram)"


def measure(work, name, target):
    """CPU microseconds per request of one target (user + system)."""
    cmd, port, stop_signal, headers = target[:4]
    env = target[4] if len(target) > 4 else {}
    expect = target[5] if len(target) > 5 else ("200",)
    log = open(os.path.join(work, f"cpu-{len(os.listdir(work))}.log"), "w")
    proc = subprocess.Popen(["taskset", "-c", run.SERVER_CPU, *cmd], stdout=log, stderr=log,
                            env={**os.environ, **env})
    try:
        if not peers.wait_up(port, proc, timeout=60):
            run.die(f"{name}: nothing routes on 127.0.0.1:{port} (see {log.name})")
        load(port, WARM, headers, expect, name)
        before = sum(run.cpu_ticks(proc.pid))
        load(port, REQUESTS, headers, expect, name)
        after = sum(run.cpu_ticks(proc.pid))
    finally:
        peers.stop(proc, stop_signal, 60)
        log.close()
    return (after - before) * 1e6 / run.TICK / REQUESTS


def load(port, n, headers, expect, name):
    """`n` requests from CPU 0, every answer one of `expect`."""
    instructions.oha(port, n, headers, expect, name, pin=run.LOAD_CPU)


def main(record):
    run.need("nginx", "nginx-light")
    run.need("taskset", "util-linux")
    if os.cpu_count() < 2:
        run.die("the timed run pins the load generator and the servers to separate CPUs: it needs 2")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "turnpike", "--example", "pingora-floor"],
                   cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="turnpike-cputime-")
    absent = peers.missing()
    for name, install in absent.items():
        print(f"peer {name} is not installed and is left out of this run ({install})")
    present = [n for n in ("nginx + Lua", "traefik", "pingap") if n not in absent]
    all_targets, key = instructions.targets(work)
    all_targets.update(instructions.peer_targets(work, present, key))
    backend = subprocess.Popen(["taskset", "-c", run.SERVER_CPU, "nginx", "-c",
                                instructions.write(os.path.join(work, "backend.conf"), run.backend_conf(work)),
                                "-p", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rounds = []
    try:
        run.wait_port(run.BACKEND_PORT)
        for i in range(ROUNDS):
            this = {}
            for name, target in all_targets.items():
                this[name] = measure(work, name, target)
                print(f"round {i + 1}: {name}: {this[name]:.1f} us CPU/request", flush=True)
            rounds.append(this)
    finally:
        peers.stop(backend, signal.SIGQUIT, 10)
        run.remove_access_log()
    report = render(rounds, present)
    print(report)
    if record:
        with open(os.path.join(run.ROOT, "loadtest", "RESULTS.md"), "a") as f:
            f.write(report)


def render(rounds, present):
    med = lambda values: statistics.median(values)
    has_lua = all(LUA in r for r in rounds)
    lines = ["\n### timed CPU per request\n",
             f"`GET /items/42` over 4 keep-alive connections (oha on CPU {run.LOAD_CPU}; the target and the "
             f"backend on CPU {run.SERVER_CPU}): {WARM:,} warm-up requests, then {REQUESTS:,} timed; the target's "
             f"utime + stime from /proc. {ROUNDS} rounds: the median, and the median of each round's ratio.\n",
             "| target | CPU us/request (median) | rounds | vs nginx (median ratio) | vs nginx + Lua chain (median ratio) |",
             "|---|---|---|---|---|"]
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        vs_nginx = med([r[name] / r["nginx-proxy"] for r in rounds])
        vs_lua = f"{med([r[name] / r[LUA] for r in rounds]):.2f}" if has_lua else "-"
        lines.append(f"| {name} | {med(values):.1f} | {' / '.join(f'{v:.1f}' for v in values)} | "
                     f"{vs_nginx:.2f} | {vs_lua} |")
    binary = os.path.join(run.ROOT, "target", "release", "turnpike")
    tool = lambda *cmd: subprocess.run(list(cmd), capture_output=True, text=True)
    return (f"\n## {datetime.date.today().isoformat()} {platform.node()} (timed CPU)\n\n"
            f"- {tool('nginx', '-v').stderr.strip()}, turnpike {tool(binary, '--version').stdout.strip()} (release)"
            + "".join(f", {peers.version(n)}" for n in present) + "\n"
            f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, kernel {platform.release()}; "
            f"load average {os.getloadavg()[0]:.2f} at the end\n"
            + "\n".join(lines) + "\n")
