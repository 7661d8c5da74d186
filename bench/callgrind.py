#!/usr/bin/env python3
"""User-space instructions per proxied HTTP/1.1 keep-alive request, edgemesh against nginx,
counted by valgrind's callgrind: repeatable whatever else the machine does, unlike timings.

  python3 bench/callgrind.py [REQUESTS]                # default 20000; needs a release build
  python3 bench/callgrind.py [REQUESTS] --access-log   # edgemesh with and without [access_log]
  python3 bench/callgrind.py [SECONDS] --tls           # per full TLS 1.3 handshake (default 20 s
                                                       # of proxy/examples/tls_load, 4 at a time)
  python3 bench/callgrind.py [REQUESTS] --h2           # per HTTP/2 request, edgemesh alone
                                                       # (cleartext, 16 connections x 10 streams)
  CACHE_SIM=1 python3 bench/callgrind.py ...            # also cache misses (callgrind_annotate)

Counts only the load phase (counters zeroed after a warm-up, dumped after exactly REQUESTS
requests from h2load --h1 over 16 keep-alive connections), then prints each contender's
instructions per request (edgemesh, nginx, and hyper with nothing on top: the floor under
edgemesh, proxy/examples/hyper_floor.rs) and where edgemesh's profile is
(bench/out/callgrind.edgemesh*).
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxies as P  # noqa: E402

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
TLS = "--tls" in sys.argv
N = int(ARGS[0]) if ARGS else (20 if TLS else 20000)
ACCESS_LOG = "--access-log" in sys.argv
H2 = "--h2" in sys.argv
CACHE_SIM = ["--cache-sim=yes"] if os.environ.get("CACHE_SIM") else []


def load(port, n, h2=False):
    # HTTP/2: cleartext with prior knowledge (edgemesh's HTTP listener tells it by the preface).
    mode = ["-m10"] if h2 else ["--h1"]
    out = P.sh("h2load", *mode, "-n", str(n), "-c16", f"http://127.0.0.1:{port}/")
    if f"{n} succeeded" not in out:
        sys.exit(f"not every request succeeded:\n{out}")
    return n


def handshakes(port, secs):
    """Full TLS 1.3 handshakes (one request each, 4 at a time) for `secs`; how many."""
    out = json.loads(P.sh(P.TLS_LOAD, f"127.0.0.1:{port}", "bench.test", "4", str(secs)))
    if out["errors"] or out["suite"] != P.TLS_LOAD_SUITE:
        sys.exit(f"tls_load 127.0.0.1:{port}: {out}")
    return out["connections"]


def count(name, argv, port, env=None, work=None):
    """Instructions per unit of work. `work(warm_up)` runs the load and returns how many
    units it did (by default N requests by `load`); the requests on `port` that wake the
    process for its dump count as units too."""
    work = work or (lambda warm_up: load(port, 2000 if warm_up else N))
    out = os.path.join(P.OUT, f"callgrind.{name}")
    for f in os.listdir(P.OUT):
        if f.startswith(f"callgrind.{name}"):
            os.remove(os.path.join(P.OUT, f))
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             "--dump-instr=" + ("yes" if os.environ.get("DUMP_INSTR") else "no"), *CACHE_SIM, *argv],
                            env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return measure(name, proc, port, work)
    finally:
        proc.terminate()
        proc.wait()


def measure(name, proc, port, work):
    P.wait_port(port, name, limit=60)
    work(True)  # warm-up: connections, pools, allocator
    P.sh("callgrind_control", "-z", str(proc.pid))
    units = work(False)
    def dumps():
        return {f: os.path.getmtime(os.path.join(P.OUT, f)) for f in os.listdir(P.OUT)
                if f.startswith(f"callgrind.{name}")}
    before = dumps()
    P.sh("callgrind_control", "-d", str(proc.pid))
    # The dump requested after the load (a new or rewritten file) holds the load phase. An
    # idle process acts on the request only when it runs again: one request at a time wakes
    # it, and each is counted.
    extra = 0
    t0 = time.time()
    fresh = []
    while not fresh and time.time() - t0 < 60:
        P.sh("curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/")
        extra += 1
        time.sleep(0.5)
        fresh = [f for f, m in dumps().items() if before.get(f) != m]
    if not fresh:
        sys.exit(f"callgrind did not dump {name}")
    part = os.path.join(P.OUT, fresh[0])
    time.sleep(1)  # the dump is complete
    total = next(int(l.split()[1]) for l in open(part) if l.startswith("summary:") or
                 l.startswith("totals:"))
    return total / (units + extra), part


def main():
    os.makedirs(P.OUT, exist_ok=True)
    os.sched_setaffinity(0, {int(P.LOAD_CPU)})
    backends = P.start_backends()
    try:
        def edgemesh_conf(name, extra=""):
            conf = os.path.join(P.OUT, f"callgrind-{name}.toml")
            P.write(conf, f"""
[node]
data_dir = "{P.OUT}/cg-data-{name}"
admin_addr = "127.0.0.1:{P.EDGE_ADMIN}"
watch_config = false
[tls]
local_ca = false
{extra}
[[listeners]]
name = "web"
addr = "127.0.0.1:{P.PORTS['edgemesh']['http']}"
kind = "http"
[[routes]]
hosts = ["*"]
pool = "app"
tls = false
[pools.app]
endpoints = ["127.0.0.1:{P.BACKEND}"]
""")
            return conf

        env = {"EDGEMESH_LOG": "warn", "EDGEMESH_WORKERS": "1"}
        port = P.PORTS["edgemesh"]["http"]
        conf = edgemesh_conf("edgemesh")
        if TLS:
            tls_handshakes(edgemesh_conf, env)
            return
        if H2:
            e, e_out = count("edgemesh_h2", [P.EDGE, "--config", conf], port, env,
                             lambda warm_up: load(port, 2000 if warm_up else N, h2=True))
            print(f"user-space instructions per HTTP/2 request: edgemesh {e:,.0f}")
            print(f"edgemesh's profile of the load phase: {e_out}")
            return
        if ACCESS_LOG:
            # Every thread counts, the log writer's too.
            log = edgemesh_conf("edgemesh_log", f'[access_log]\nformat = "json"\n'
                                                f'path = "{P.OUT}/cg-access.log"')
            off, _ = count("edgemesh", [P.EDGE, "--config", conf], port, env)
            on, on_out = count("edgemesh_log", [P.EDGE, "--config", log], port, env)
            print(f"user-space instructions per request: edgemesh {off:,.0f}, with the access "
                  f"log {on:,.0f} (+{on - off:,.0f}, {on / off - 1:+.1%})")
            print(f"the profile with the log: {on_out}")
            return
        nginx = P.nginx_conf("cg-nginx", f"""
  server {{ listen 127.0.0.1:{P.PORTS['nginx']['http']}; location / {{ {P.NGINX_PROXY} }} }}""",
                              upstream=P.nginx_upstream(P.BACKEND))
        e, e_out = count("edgemesh", [P.EDGE, "--config", conf], port, env)
        n, _ = count("nginx", ["nginx", "-c", nginx, "-g", "daemon off; master_process off;"],
                     P.PORTS["nginx"]["http"])
        print(f"user-space instructions per request: edgemesh {e:,.0f}, nginx {n:,.0f} "
              f"(ratio {e / n:.2f})")
        if not os.path.exists(P.FLOOR):
            sys.exit(f"{P.FLOOR} is missing: cargo build --release -p edgemesh-proxy "
                     "--example hyper_floor")
        floor_port = P.PORTS["hyper_floor"]["http"]
        f, _ = count("hyper_floor", [P.FLOOR, f"127.0.0.1:{floor_port}",
                                     f"127.0.0.1:{P.BACKEND}"], floor_port)
        print(f"hyper with nothing on top (proxy/examples/hyper_floor.rs): {f:,.0f} "
              f"(edgemesh is {e / f:.2f}x that, nginx {n / f:.2f}x)")
        # The release build inlines most of the data path into a few functions (fat LTO), so
        # the per-function split is coarse; the file is there for callgrind_annotate.
        print(f"edgemesh's profile of the load phase: {e_out}")
    finally:
        for b in backends:
            b.terminate()


def tls_handshakes(edgemesh_conf, env):
    """Instructions per full TLS 1.3 handshake (ECDSA P-256, X25519, one request each),
    edgemesh (rustls + aws-lc-rs) against nginx (OpenSSL), sessions off on both."""
    key, crt, _ = P.cert()
    port, tls_port = P.PORTS["edgemesh"]["http"], P.PORTS["edgemesh"]["https"]
    conf = edgemesh_conf("edgemesh_tls", f"""{P.tls_settings(crt, key)}
[[listeners]]
name = "websecure"
addr = "127.0.0.1:{tls_port}"
kind = "https"
[[routes]]
hosts = ["bench.test"]
pool = "app"
redirect_https = false""")
    e, e_out = count("edgemesh_tls", [P.EDGE, "--config", conf], port, env,
                     lambda warm_up: handshakes(tls_port, 3 if warm_up else N))
    n_port, n_tls = P.PORTS["nginx"]["http"], P.PORTS["nginx"]["https"]
    nginx = P.nginx_conf("cg-nginx-tls", f"""
  server {{ listen 127.0.0.1:{n_port}; location / {{ {P.NGINX_PROXY} }} }}
  server {{ listen 127.0.0.1:{n_tls} ssl;
    ssl_certificate {crt}; ssl_certificate_key {key}; ssl_protocols TLSv1.3;
    ssl_session_cache off; ssl_session_tickets off;
    location / {{ {P.NGINX_PROXY} }} }}""", upstream=P.nginx_upstream(P.BACKEND))
    n, _ = count("nginx_tls", ["nginx", "-c", nginx, "-g", "daemon off; master_process off;"],
                 n_port, None, lambda warm_up: handshakes(n_tls, 3 if warm_up else N))
    print(f"user-space instructions per full handshake (with its one request): edgemesh "
          f"{e:,.0f}, nginx {n:,.0f} (ratio {e / n:.2f})")
    print(f"edgemesh's profile of the load phase: {e_out}")


if __name__ == "__main__":
    main()
