#!/usr/bin/env python3
"""Gossip figures from real edgemesh processes on loopback (release build, default timings).

Starts N nodes, then measures: time to converge, gossip bytes/s per node at rest, time for
every survivor to see a kill -9 (p50, p99), and time for a pool published by the leader to be
served by every node. Prints a markdown table; bench/mesh.sh puts it in BENCHMARKS.md.
"""
import json, os, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

N = int(os.environ.get("NODES", "10"))
BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def members(port):
    return json.loads(get(port, "/members"))


def wait(cond, limit, what):
    def ok():
        try:
            return cond()
        except OSError:  # not listening yet
            return False
    start = time.time()
    while not ok():
        if time.time() - start > limit:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.time() - start


work = tempfile.mkdtemp(prefix="edgemesh-bench-")
key = subprocess.run([f"{BIN}/meshctl", "keygen"], capture_output=True, text=True).stdout
open(f"{work}/cluster.key", "w").write(key)
backend = socket.socket(); backend.bind(("127.0.0.1", 0)); backend.listen(64)
backend_addr = "127.0.0.1:%d" % backend.getsockname()[1]

nodes = []
seed_port = None
for i in range(N):
    admin, gossip, sync, http = free_port(), free_port(), free_port(), free_port()
    seeds = f'"127.0.0.1:{seed_port}"' if seed_port else ""
    seed_port = seed_port or gossip
    cfg = f"""
[node]
data_dir = "{work}/data"
admin_addr = "127.0.0.1:{admin}"
[[listeners]]
name = "web"
addr = "127.0.0.1:{http}"
kind = "http"
[[routes]]
hosts = ["*"]
pool = "app"
tls = false
[pools.app]
endpoints = ["127.0.0.1:9"]
[gossip]
bind = "127.0.0.1:{gossip}"
sync_port = {sync}
node_id = "b{i:02}"
seeds = [{seeds}]
key_file = "{work}/cluster.key"
expected_cluster_size = {N}
bootstrap_expect = 3
"""
    path = f"{work}/n{i}.toml"
    open(path, "w").write(cfg)
    proc = subprocess.Popen([f"{BIN}/edgemesh", "--config", path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "EDGEMESH_LOG": "warn"})
    nodes.append({"proc": proc, "admin": admin, "id": f"b{i:02}"})
    wait(lambda: get(admin, "/healthz") == "ok\n", 20, "node start")

try:
    converge = wait(lambda: all(len(members(n["admin"])["members"]) == N - 1 for n in nodes), 60,
                    "convergence")
    leader = None
    def one_leader():
        global leader
        acting = [n for n in nodes if members(n["admin"])["election"]["acting"]]
        leader = acting[0] if len(acting) == 1 else None
        return leader is not None
    wait(one_leader, 60, "a leader")

    time.sleep(5)
    before = {n["id"]: members(n["admin"])["bytes_sent"] for n in nodes}
    t0 = time.time(); time.sleep(30); dt = time.time() - t0
    after = {n["id"]: members(n["admin"])["bytes_sent"] for n in nodes}
    rest = statistics.mean((after[k] - before[k]) / dt for k in before)

    # A pool published by the leader, served everywhere.
    t0 = time.time()
    subprocess.run([f"{BIN}/meshctl", "--addr", f"127.0.0.1:{leader['admin']}", "pool", "set", "app",
                    backend_addr], check=True, capture_output=True)
    def everywhere():
        for n in nodes:
            pools = json.loads(get(n["admin"], "/status"))["pools"]
            if pools[0]["endpoints"][0]["addr"] != backend_addr:
                return False
        return True
    reach = wait(everywhere, 60, "pool everywhere")

    # kill -9 of a non-leader: when does each survivor notice?
    victim = next(n for n in nodes if n is not leader)
    victim["proc"].send_signal(signal.SIGKILL); victim["proc"].wait(); t0 = time.time()
    survivors = [n for n in nodes if n is not victim]
    seen = {}
    while len(seen) < len(survivors) and time.time() - t0 < 60:
        for n in survivors:
            if n["id"] not in seen and victim["id"] not in [m["id"] for m in members(n["admin"])["members"]]:
                seen[n["id"]] = time.time() - t0
        time.sleep(0.02)
    d = sorted(seen.values())
    p50, p99 = d[len(d) // 2], d[min(len(d) - 1, int(len(d) * 0.99))]
    print("| nodes | converge | detection p50 | detection p99 | pool reaches all | bytes/s per node at rest |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {N} | {converge:.2f} s | {p50:.1f} s | {p99:.1f} s | {reach:.2f} s | {rest:.0f} B/s |")
finally:
    for n in nodes:
        if n["proc"].poll() is None:
            n["proc"].terminate()
    for n in nodes:
        n["proc"].wait()
