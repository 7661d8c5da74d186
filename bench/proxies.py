#!/usr/bin/env python3
"""edgemesh side by side with nginx, HAProxy and socat, on loopback, in one run.

Run through bench/run.sh (which builds the release binary and installs the contenders).
Every contender is pinned to CPU 1; this script, the load generators (wrk, h2load, iperf3)
and the backends are pinned to CPU 0. Each scenario runs ROUNDS times per contender, the
contenders' order rotating from round to round; medians are reported. The section it writes
goes between the proxy markers of BENCHMARKS.md.

  ROUNDS=3 DURATION=10 bench/run.sh           # defaults
  SCENARIOS=http,tcp_bulk bench/run.sh         # a subset (BENCHMARKS.md is then not written)
  MEMORY_KINDS=tls SCENARIOS=memory python3 bench/proxies.py   # idle TLS connections instead
"""
import asyncio
import datetime
import http.client
import json
import os
import re
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "bench", "out")
EDGE = os.environ.get("EDGEMESH_BIN", os.path.join(ROOT, "target", "release", "edgemesh"))
MESHCTL = os.path.join(os.path.dirname(EDGE), "meshctl")
# hyper with nothing on top (proxy/examples/hyper_floor.rs): the floor under edgemesh's data path.
FLOOR = os.environ.get("HYPER_FLOOR_BIN",
                       os.path.join(ROOT, "target", "release", "examples", "hyper_floor"))
# The full-handshake load generator (proxy/examples/tls_load.rs): see tls_load() below.
TLS_LOAD = os.environ.get("TLS_LOAD_BIN",
                          os.path.join(ROOT, "target", "release", "examples", "tls_load"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
# TCP bulk gets at least 6 rounds: with iperf3's client and server on the one load core, a
# round now and then runs at 60% of its neighbours' rate (edgemesh: 2.03, 1.25, 1.46, 2.03,
# 2.06, 2.01 GB/s in one 6-round run), and the median of 3 can land on one of those.
# HTTP/1.1 keep-alive gets 6 too: its targets are the closest (a few percent either way) and
# on a shared host every contender's rate moves 20% between rounds.
MIN_ROUNDS = {"tcp_bulk": 6, "http": 6}
SCENARIO_TITLE = {"tcp_bulk": "TCP bulk", "http": "HTTP/1.1 keep-alive"}
DURATION = int(os.environ.get("DURATION", "10"))
CONNS = int(os.environ.get("CONNS", "64"))
# Idle connections held open (memory scenario), capped by the file descriptors the machine
# grants: a proxy holds one descriptor per client and up to one per upstream connection.
_FD_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
IDLE_CONNS = min(int(os.environ.get("IDLE_CONNS", "10000")), (_FD_HARD - 400) // 2)
# Which idle connections the memory scenario holds, in this order: "http", "tls" (TLS 1.3).
# Every contender keeps memory from the connections it held (its RSS stays up after they
# close), and the next kind can reuse it. So TLS is measured apart:
# MEMORY_KINDS=tls SCENARIOS=memory python3 bench/proxies.py (printed only).
MEMORY_KINDS = os.environ.get("MEMORY_KINDS", "http").split(",")
LOAD_CPU, PROXY_CPU = "0", "1"
ALL = ["http", "https", "tls_new", "h2", "tcp_bulk", "tcp_new", "churn", "access_log", "memory"]
SCENARIOS = os.environ.get("SCENARIOS", ",".join(ALL)).split(",")

# Ports. Backends: HTTP (two, identical, for pool churn) and iperf3.
BACKEND, BACKEND2, IPERF = 18080, 18090, 15201
PORTS = {
    "edgemesh": {"http": 18182, "https": 18183, "tcp_bulk": 18184, "tcp_new": 18185},
    "nginx": {"http": 18281, "https": 18283},
    "haproxy": {"http": 18381, "https": 18383, "tcp_bulk": 18384, "tcp_new": 18385},
    "socat": {"tcp_bulk": 18484, "tcp_new": 18485},
    # The same edgemesh configuration with the access log on (JSON lines to a file).
    "edgemesh_log": {"http": 18582, "https": 18583, "tcp_bulk": 18584, "tcp_new": 18585},
    # nginx with its access log on (the same fields as JSON, buffered): what logging costs
    # the reference proxy on this machine.
    "nginx_log": {"http": 18681},
    "hyper_floor": {"http": 18781},
}
EDGE_ADMIN, EDGE_GOSSIP = 19901, 17946
EDGE_LOG_ADMIN, EDGE_LOG_GOSSIP = 19902, 17956


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def pinned(cpu, *args):
    return ["taskset", "-c", cpu, *args]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- processes and accounting

def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def tree(pid):
    out = [pid]
    for c in children(pid):
        out += tree(c)
    return out


def rss_kib(pid):
    """Resident memory of a process and its descendants (nginx: master and workers)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def cpu_secs(pid):
    """User and kernel CPU seconds of a process, its live descendants and its reaped children
    (socat's forks, nginx's workers replaced by a reload)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = kernel = 0
    for i, p in enumerate(tree(pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (1-based); fields[0] is field 3.
        user += int(fields[11])
        kernel += int(fields[12])
        if i == 0:
            user += int(fields[13])
            kernel += int(fields[14])
    return user / tick, kernel / tick


def wait_port(port, what, limit=20):
    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} is not listening on 127.0.0.1:{port} after {limit} s (see {OUT})")


class Contender:
    def __init__(self, name, argv, env=None):
        self.name = name
        log = open(os.path.join(OUT, f"{name}.log"), "w")
        self.proc = subprocess.Popen(pinned(PROXY_CPU, *argv), stdout=log, stderr=log,
                                     env={**os.environ, **(env or {})})
        self.ports = PORTS[name]

    @property
    def pid(self):
        return self.proc.pid

    def roots(self):
        return [self.pid] + [o.pid for o in getattr(self, "others", [])]

    def rss_kib(self):
        return sum(rss_kib(p) for p in self.roots())

    def cpu_secs(self):
        times = [cpu_secs(p) for p in self.roots()]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def alive(self):
        if self.proc.poll() is not None:
            sys.exit(f"{self.name} exited with {self.proc.returncode} (see {OUT}/{self.name}.log)")


# ---------------------------------------------------------------- configurations

def cert():
    """ECDSA P-256 key and a self-signed certificate for bench.test."""
    key, crt = os.path.join(OUT, "bench.key"), os.path.join(OUT, "bench.crt")
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-keyout", key, "-out", crt, "-days", "30", "-subj", "/CN=bench.test",
       "-addext", "subjectAltName=DNS:bench.test")
    pem = os.path.join(OUT, "bench.pem")
    write(pem, open(crt).read() + open(key).read())
    return key, crt, pem


def nginx_conf(name, body, upstream=""):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    temps = "\n".join(f"  {t}_temp_path {d};" for t in
                      ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    write(f"{d}/nginx.conf", f"""
worker_processes 1;
worker_rlimit_nofile {_FD_HARD};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {IDLE_CONNS + 1024}; }}
http {{
  access_log off;
{temps}
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  {upstream}
  {body}
}}
""")
    return f"{d}/nginx.conf"


# nginx as the equivalent reverse proxy: pooled keep-alive upstream connections, the same
# forwarding headers edgemesh sets.
NGINX_PROXY = """proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection '';
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;"""


def nginx_upstream(port):
    return f"upstream app {{ server 127.0.0.1:{port}; keepalive 128; }}"


def start_backends():
    conf = nginx_conf("backend", f"""
  server {{ listen 127.0.0.1:{BACKEND} backlog=4096; listen 127.0.0.1:{BACKEND2} backlog=4096;
    location / {{ return 200 'hello, world\\n'; }} }}""")
    procs = [subprocess.Popen(pinned(LOAD_CPU, "nginx", "-c", conf, "-g", "daemon off;"))]
    procs.append(subprocess.Popen(pinned(LOAD_CPU, "iperf3", "-s", "-p", str(IPERF)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p in (BACKEND, BACKEND2, IPERF):
        wait_port(p, "backend")
    return procs


def tls_settings(crt, key):
    """The [tls] keys of every edgemesh a bench starts: the bench certificate, and sessions
    off (a new connection is a full handshake)."""
    return (f'default_cert = "bench.test"\nsession_resumption = false\n'
            f'[[tls.certificates]]\ncert = "{crt}"\nkey = "{key}"')


def start_edgemesh(crt, key, name="edgemesh", admin=EDGE_ADMIN, gossip=EDGE_GOSSIP, extra=""):
    p = PORTS[name]
    d = os.path.join(OUT, f"{name}-data")
    write(os.path.join(OUT, "cluster.key"), sh(MESHCTL, "keygen"))
    conf = os.path.join(OUT, f"{name}.toml")
    # Session resumption is off on every contender: wrk and h2load resume sessions when the
    # server lets them, and the new-connection scenario measures full handshakes.
    # A one-node mesh: pools change the way they do in production (published by the leader
    # into the replicated state), which the churn scenario exercises.
    write(conf, f"""
[node]
data_dir = "{d}"
admin_addr = "127.0.0.1:{admin}"
watch_config = false
{extra}
[tls]
local_ca = false
{tls_settings(crt, key)}
[[listeners]]
name = "web"
addr = "127.0.0.1:{p['http']}"
kind = "http"
[[listeners]]
name = "websecure"
addr = "127.0.0.1:{p['https']}"
kind = "https"
[[listeners]]
name = "bulk"
addr = "127.0.0.1:{p['tcp_bulk']}"
kind = "tcp"
pool = "iperf"
[[listeners]]
name = "conns"
addr = "127.0.0.1:{p['tcp_new']}"
kind = "tcp"
pool = "app"
[[routes]]
hosts = ["*"]
pool = "app"
tls = false
[[routes]]
hosts = ["bench.test"]
pool = "app"
redirect_https = false
[pools.app]
endpoints = ["127.0.0.1:{BACKEND}"]
[pools.iperf]
endpoints = ["127.0.0.1:{IPERF}"]
[gossip]
bind = "127.0.0.1:{gossip}"
node_id = "{name}"
seeds = []
key_file = "{OUT}/cluster.key"
bootstrap_expect = 1
""")
    sh(EDGE, "check-config", conf)
    c = Contender(name, [EDGE, "--config", conf], {"EDGEMESH_LOG": "warn"})
    wait_port(admin, f"{name} admin")
    return c


def start_nginx(crt, key):
    p = PORTS["nginx"]
    d = os.path.join(OUT, "nginx")
    os.makedirs(d, exist_ok=True)
    write(f"{d}/upstream.conf", nginx_upstream(BACKEND))
    conf = nginx_conf("nginx", f"""
  server {{ listen 127.0.0.1:{p['http']} backlog=4096; location / {{ {NGINX_PROXY} }} }}
  server {{ listen 127.0.0.1:{p['https']} ssl http2 backlog=4096;
    ssl_certificate {crt}; ssl_certificate_key {key}; ssl_protocols TLSv1.3;
    ssl_session_cache off; ssl_session_tickets off;
    location / {{ {NGINX_PROXY} }} }}""", upstream=f"include {d}/upstream.conf;")
    c = Contender("nginx", ["nginx", "-c", conf, "-g", "daemon off;"])
    c.upstream_file = f"{d}/upstream.conf"
    return c


# nginx's closest equivalent of edgemesh's JSON line, written through a 64 KiB buffer.
NGINX_LOG_FORMAT = """log_format edge escape=json '{"time":"$time_iso8601","kind":"http",'
    '"client":"$remote_addr","host":"$host","method":"$request_method","path":"$request_uri",'
    '"protocol":"$server_protocol","status":$status,"bytes_in":$request_length,'
    '"bytes_out":$bytes_sent,"upstream":"$upstream_addr",'
    '"upstream_ms":"$upstream_response_time","total_ms":$request_time,'
    '"tls_version":"$ssl_protocol","sni":"$ssl_server_name","referer":"$http_referer",'
    '"user_agent":"$http_user_agent"}';"""


def start_nginx_log(log_path):
    p = PORTS["nginx_log"]
    conf = nginx_conf("nginx_log", f"""
  {NGINX_LOG_FORMAT}
  server {{ listen 127.0.0.1:{p['http']} backlog=4096;
    access_log {log_path} edge buffer=64k flush=1s;
    location / {{ {NGINX_PROXY} }} }}""", upstream=nginx_upstream(BACKEND))
    return Contender("nginx_log", ["nginx", "-c", conf, "-g", "daemon off;"])


def start_haproxy(pem):
    p = PORTS["haproxy"]
    sock = os.path.join(OUT, "haproxy.sock")
    conf = os.path.join(OUT, "haproxy.cfg")
    write(conf, f"""
global
  nbthread 1
  maxconn {IDLE_CONNS + 100}
  stats socket {sock} level admin
  tune.ssl.cachesize 0
  ssl-default-bind-options ssl-min-ver TLSv1.3
  # HAProxy prefers its own order, and OpenSSL's puts AES-256-GCM first: the same suite as
  # every other contender (AES-128-GCM, whose SHA-256 key schedule is the cheaper one).
  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend http
  bind 127.0.0.1:{p['http']}
  option forwardfor
  default_backend app
frontend https
  bind 127.0.0.1:{p['https']} ssl crt {pem} alpn h2,http/1.1 no-tls-tickets
  option forwardfor
  default_backend app
backend app
  server s1 127.0.0.1:{BACKEND}
frontend bulk
  mode tcp
  bind 127.0.0.1:{p['tcp_bulk']}
  default_backend iperf
backend iperf
  mode tcp
  server s1 127.0.0.1:{IPERF}
frontend conns
  mode tcp
  bind 127.0.0.1:{p['tcp_new']}
  default_backend app_tcp
backend app_tcp
  mode tcp
  server s1 127.0.0.1:{BACKEND}
""")
    sh("haproxy", "-c", "-q", "-f", conf)
    c = Contender("haproxy", ["haproxy", "-f", conf, "-db"])
    c.sock = sock
    return c


def start_hyper_floor():
    return Contender("hyper_floor", [FLOOR, f"127.0.0.1:{PORTS['hyper_floor']['http']}",
                                     f"127.0.0.1:{BACKEND}"])


def start_socat():
    p = PORTS["socat"]
    # Two listeners, each forking a process per connection (as the seed used it): one parent
    # process per listener, so the contender is the bulk listener's process tree plus the other.
    c = Contender("socat", ["socat", f"TCP-LISTEN:{p['tcp_bulk']},fork,reuseaddr,backlog=4096",
                            f"TCP:127.0.0.1:{IPERF}"])
    c.others = [subprocess.Popen(pinned(PROXY_CPU, "socat",
                                        f"TCP-LISTEN:{p['tcp_new']},fork,reuseaddr,backlog=4096",
                                        f"TCP:127.0.0.1:{BACKEND}"))]
    return c


# ---------------------------------------------------------------- load generators

def to_ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]


def wrk(url, extra=(), duration=None):
    out = sh(*pinned(LOAD_CPU, "wrk", "-t1", f"-c{CONNS}", f"-d{duration or DURATION}s",
                     "--latency", "-H", "Host: bench.test", *extra, url))
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
         "p50": to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
         "p99": to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))}
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["errors"] = (sum(map(int, errs.groups())) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0)
    r["error_share"] = r["errors"] / max(total + r["errors"], 1)
    return r


# The suite tls_load offers first; every contender must negotiate it (see tls_load()).
TLS_LOAD_SUITE = "TLS13_AES_128_GCM_SHA256"


def tls_load(port):
    """Full TLS 1.3 handshakes, one request each, CONNS at a time. wrk's side of a handshake
    costs about as much as the proxy's, so on the one load core it bounded every contender;
    tls_load does the client's key exchange and key schedule but skips checking the server's
    certificate and signature (the server's side of each handshake is unchanged)."""
    out = json.loads(sh(*pinned(LOAD_CPU, TLS_LOAD, f"127.0.0.1:{port}", "bench.test",
                                str(CONNS), str(DURATION))))
    if out["first_error"]:
        print(f"  tls_load 127.0.0.1:{port}: {out['errors']} errors, first: {out['first_error']}")
    if out["suite"] != TLS_LOAD_SUITE:
        sys.exit(f"tls_load 127.0.0.1:{port} negotiated {out['suite']}, not {TLS_LOAD_SUITE}")
    return {"rps": out["connections"] / out["seconds"], "p50": out["p50_ms"], "p99": out["p99_ms"],
            "errors": out["errors"],
            "error_share": out["errors"] / max(out["connections"] + out["errors"], 1)}


def h2load(url):
    out = sh(*pinned(LOAD_CPU, "h2load", "-t1", "-c32", "-m10", f"-D{DURATION}",
                     "--warm-up-time=1", url))
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    if "h2" not in re.search(r"Application protocol: (\S+)", out).group(1):
        sys.exit(f"h2load did not negotiate h2 with {url}:\n{out}")
    return {"rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1)),
            "errors": int(done.group(2)),
            "error_share": int(done.group(2)) / max(int(done.group(1)) + int(done.group(2)), 1)}


def iperf(port):
    out = json.loads(sh(*pinned(LOAD_CPU, "iperf3", "-c", "127.0.0.1", "-p", str(port),
                                "-t", str(DURATION), "-J")))
    return {"gbs": out["end"]["sum_received"]["bits_per_second"] / 8e9, "errors": 0,
            "error_share": 0.0}


# ---------------------------------------------------------------- churn drivers

def edge_admin(method, path, body=None):
    """One request to edgemesh's admin API: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", EDGE_ADMIN, timeout=5)
    try:
        conn.request(method, path, body)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


class Churn(threading.Thread):
    """Changes a contender's pool between the two backend ports 10 times a second."""

    def __init__(self, contender):
        super().__init__(daemon=True)
        self.c, self.stop, self.changes, self.failures = contender, threading.Event(), 0, []

    def change(self, port):
        name = self.c.name
        if name == "edgemesh":
            status, body = edge_admin("PUT", "/pools/app", json.dumps([f"127.0.0.1:{port}"]))
            if status != 200:
                raise RuntimeError(f"PUT /pools/app: {status} {body}")
        elif name == "nginx":
            write(self.c.upstream_file, nginx_upstream(port))
            os.kill(self.c.pid, signal.SIGHUP)
        elif name == "haproxy":
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.c.sock)
            s.sendall(f"set server app/s1 addr 127.0.0.1 port {port}\n".encode())
            reply = s.recv(4096).decode()
            s.close()
            if "changed" not in reply and "no need to change" not in reply:
                raise RuntimeError(f"haproxy runtime API: {reply.strip()}")

    def run(self):
        port = BACKEND
        while not self.stop.wait(0.1):
            port = BACKEND2 if port == BACKEND else BACKEND
            try:
                self.change(port)
                self.changes += 1
            except Exception as e:  # reported in the table, not fatal mid-run
                self.failures.append(str(e))


# ---------------------------------------------------------------- idle connections

async def hold_idle(port, n, ready, release, tls=False):
    """Opens n keep-alive connections (TLS 1.3 if `tls`), one request each, holds them until
    released."""
    req = b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n"
    conns = []
    ctx = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(["http/1.1"])

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                             server_hostname="bench.test" if tls else None)
        w.write(req)
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {head[:40]!r}")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        await r.readexactly(length)
        conns.append(w)

    for i in range(0, n, 500):
        await asyncio.gather(*(one() for _ in range(min(500, n - i))))
    ready.set()
    while not release.is_set():
        await asyncio.sleep(0.05)
    for w in conns:
        w.close()
    return len(conns)


def idle_memory(c, tls=False):
    """RSS growth per idle keep-alive connection (HTTP, or HTTPS if `tls`), and the RSS 2 s
    after they closed: memory the process kept from them can serve the next measurement."""
    ready, release = threading.Event(), threading.Event()
    result = {}
    port = c.ports["https" if tls else "http"]

    def client():
        try:
            result["n"] = asyncio.run(hold_idle(port, IDLE_CONNS, ready, release, tls))
        except Exception as e:
            result["error"] = e
            ready.set()

    before = c.rss_kib()
    t = threading.Thread(target=client)
    t.start()
    ready.wait()
    if "error" in result:
        sys.exit(f"{c.name}: opening {IDLE_CONNS} idle {'TLS ' if tls else ''}connections "
                 f"failed: {result['error']}")
    time.sleep(2)
    held = c.rss_kib()
    release.set()
    t.join()
    time.sleep(2)
    p = "tls_" if tls else ""
    return {f"{p}before_kib": before, f"{p}held_kib": held, f"{p}after_kib": c.rss_kib(),
            f"{p}per_conn_kib": (held - before) / IDLE_CONNS}


# ---------------------------------------------------------------- scenarios

def measure(c, fn):
    """Runs fn, returning its figures plus the contender's CPU use (fraction of its core)."""
    c.alive()
    t0, (user0, kernel0) = time.time(), c.cpu_secs()
    r = fn()
    user1, kernel1 = c.cpu_secs()
    elapsed = time.time() - t0
    r["cpu"] = (user1 - user0 + kernel1 - kernel0) / elapsed
    # CPU time per request or connection, in microseconds, split user / kernel.
    done = r.get("rps", 0) * elapsed
    if done:
        r["user_us"] = (user1 - user0) / done * 1e6
        r["kernel_us"] = (kernel1 - kernel0) / done * 1e6
    c.alive()
    return r


def run_churn(c):
    churn = Churn(c)
    churn.start()
    try:
        r = wrk(f"http://127.0.0.1:{c.ports['http']}/")
    finally:
        churn.stop.set()
        churn.join()
    r["changes_per_s"] = churn.changes / DURATION
    r["change_failures"] = len(churn.failures)
    if churn.failures:
        print(f"  {c.name}: {len(churn.failures)} pool changes failed, first: {churn.failures[0]}")
    return r


SCENARIO_DEF = {
    "http": (["edgemesh", "nginx", "haproxy", "hyper_floor"],
             lambda c: wrk(f"http://127.0.0.1:{c.ports['http']}/")),
    "https": (["edgemesh", "nginx", "haproxy"],
              lambda c: wrk(f"https://127.0.0.1:{c.ports['https']}/")),
    "tls_new": (["edgemesh", "nginx", "haproxy"],
                lambda c: tls_load(c.ports["https"])),
    "h2": (["edgemesh", "nginx", "haproxy"],
           lambda c: h2load(f"https://127.0.0.1:{c.ports['https']}/")),
    "tcp_bulk": (["edgemesh", "haproxy", "socat"], lambda c: iperf(c.ports["tcp_bulk"])),
    "tcp_new": (["edgemesh", "haproxy", "socat"],
                lambda c: wrk(f"http://127.0.0.1:{c.ports['tcp_new']}/",
                              ["-H", "Connection: close"])),
    "churn": (["edgemesh", "nginx", "haproxy"], run_churn),
    "access_log": (["edgemesh", "edgemesh_log", "nginx", "nginx_log"],
                   lambda c: wrk(f"http://127.0.0.1:{c.ports['http']}/")),
}




def rounds(name, contenders, results):
    names, fn = SCENARIO_DEF[name]
    cs = [contenders[n] for n in names]
    for c in cs:  # warm-up: connections, caches, pools
        if name in ("http", "https", "churn", "access_log"):
            wrk(f"http://127.0.0.1:{c.ports['http']}/", duration=2)
    for r in range(max(ROUNDS, MIN_ROUNDS.get(name, 0))):
        order = cs[r % len(cs):] + cs[:r % len(cs)]
        if name == "access_log":
            # Pairs (without, with the log) back to back, either one first in turn.
            pairs = [cs[i:i + 2] if r % 2 == 0 else cs[i:i + 2][::-1] for i in (0, 2)]
            order = [c for pair in (pairs if r % 4 < 2 else pairs[::-1]) for c in pair]
        for c in order:
            with Perf(f"{name}.{c.name}.{r + 1}"):
                fig = measure(c, lambda: fn(c))
            results.setdefault(name, {}).setdefault(c.name, []).append(fig)
            print(f"{name:9} round {r + 1} {c.name:9} " +
                  " ".join(f"{k}={v:.4g}" for k, v in fig.items()), flush=True)
            time.sleep(1)


class Perf:
    """With PERF=1, a sampling profile of the proxy's CPU while a round runs (`perf record
    -e cpu-clock`: a timer, so it works where the host exposes no hardware counters), kernel
    included, to bench/out/perf.SCENARIO.CONTENDER.ROUND.data; the time split by where it
    went is printed just before that round's figures."""

    def __init__(self, tag):
        self.path = os.path.join(OUT, f"perf.{tag}.data")
        self.proc = None

    def __enter__(self):
        if os.environ.get("PERF"):
            self.proc = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999",
                                          "-C", PROXY_CPU, "-o", self.path],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)

    def __exit__(self, *exc):
        if self.proc:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait()
            print("  " + perf_split(self.path), flush=True)


# Where a sample's time went, by the shared object and symbol it hit.
PERF_GROUPS = [
    ("kernel", lambda dso, sym: dso.startswith("[kernel")),
    # OpenSSL; ring's and aws-lc's prefixed C symbols, and the static field and group
    # arithmetic of their curve25519 code, which carries no prefix.
    ("crypto", lambda dso, sym: "libcrypto" in dso or sym.startswith(("ring_core_", "aws_lc_"))
     or sym.startswith(("fe4_", "fe_", "ge_", "x25519_", "curve25519_"))
     or any(k in sym for k in ("nistz256", "x25519", "sha256_block", "sha512_block", "gcm",
                               "aes_hw", "aesni", "ChaCha20", "poly1305", "fiat_", "bn_mul",
                               "ecp_", "p256_", "ring::", "aws_lc_rs::"))),
    ("libc", lambda dso, sym: dso.startswith("libc.so") or dso.startswith("ld-linux")),
]


def perf_split(path):
    """'kernel 71% crypto 12% libc 3% rest 14%' from a perf.data file, with the top symbols
    of the rest."""
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "dso,sym",
                          "--stdio", "-q", "--percent-limit", "0"],
                         capture_output=True, text=True).stdout
    share, rest = {}, []
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[0].endswith("%"):
            continue
        pct, dso, sym = float(parts[0][:-1]), parts[1], parts[2].split("] ", 1)[-1].strip()
        group = next((g for g, hit in PERF_GROUPS if hit(dso, sym)), "rest")
        share[group] = share.get(group, 0) + pct
        if group == "rest":
            rest.append((pct, sym))
    top = ", ".join(f"{s[:40]} {p:.1f}%" for p, s in sorted(rest, reverse=True)[:5])
    return " ".join(f"{g} {share.get(g, 0):.1f}%" for g, _ in PERF_GROUPS + [("rest", 0)]) + \
        f" (rest: {top})"


# ---------------------------------------------------------------- report

def med(results, scen, who, key):
    return statistics.median(f[key] for f in results[scen][who])


def fmt(v):
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def table(results, scen, cols):
    """cols: (heading, key, formatter). One row per contender, medians of the rounds; for
    request and connection rates also the proxy's CPU time per request, user + kernel."""
    per_request = all("user_us" in f for fs in results[scen].values() for f in fs)
    extra = " | proxy CPU per request (user + kernel)" if per_request else ""
    lines = ["| contender | " + " | ".join(h for h, _, _ in cols) + f" | proxy CPU{extra} | errors |",
             "|---|" + "---:|" * (len(cols) + 2 + bool(per_request))]
    for who in results[scen]:
        cells = [f(med(results, scen, who, k)) for _, k, f in cols]
        cpu = med(results, scen, who, "cpu")
        errs = sum(f["errors"] for f in results[scen][who])
        per = ""
        if per_request:
            per = f" | {med(results, scen, who, 'user_us'):.1f} + " \
                  f"{med(results, scen, who, 'kernel_us'):.1f} µs"
        lines.append(f"| {who} | " + " | ".join(cells) + f" | {cpu * 100:.0f}%{per} | {errs} |")
    return "\n".join(lines)


def ratio_line(results, scen, key, target=None, lower_is_better=False, label=None):
    """edgemesh's ratio to every other contender on one figure, with the target if any.

    The ratio is the median of the per-round ratios: a round runs the contenders back to
    back, so its ratio is measured under the same load from the host's neighbours, which on
    a shared host moves every contender's rate by 20% from one round to the next (nginx:
    80,470, 65,170 and 68,220 requests/s in three rounds of one run). The ratio of the
    medians and the per-round range follow in brackets."""
    parts = []
    for who in results[scen]:
        if who == "edgemesh":
            continue
        per_round = [e[key] / o[key] for e, o in zip(results[scen]["edgemesh"], results[scen][who])]
        ratio = statistics.median(per_round)
        of_medians = med(results, scen, "edgemesh", key) / med(results, scen, who, key)
        mark = ""
        if target and who in target:
            ok = ratio <= target[who] if lower_is_better else ratio >= target[who]
            mark = f" (target {'<=' if lower_is_better else '>='} {target[who]}: " \
                   f"{'met' if ok else 'NOT met'})"
        parts.append(f"{ratio:.2f}x {who}{mark} [rounds {min(per_round):.2f}-"
                     f"{max(per_round):.2f}; medians {of_medians:.2f}x]")
    return f"- edgemesh {label or key}: " + "; ".join(parts)


def report(results, machine):
    ms = lambda v: f"{v:.2f} ms"
    rps = fmt
    md = ["<!-- proxy:begin -->", "## Proxies side by side: edgemesh, nginx, HAProxy, socat", "",
          f"Produced by `bench/run.sh` on {datetime.date.today()}: release build, every scenario "
          f"run {ROUNDS} times per contender ({DURATION} s each; "
          + ", ".join(f"{SCENARIO_TITLE[k]} {max(ROUNDS, n)} times" for k, n in MIN_ROUNDS.items())
          + "), contenders alternating; tables show "
          "medians, and each ratio is the median of the per-round ratios (ratio of the medians "
          "and per-round range in brackets). Proxy CPU is the share of its one core the contender used during the run.", "",
          *[f"- {k}: {v}" for k, v in machine.items()], ""]
    S = results
    if "http" in S:
        md += ["### HTTP/1.1 keep-alive, small response (wrk, 64 connections)", "",
               "hyper_floor is hyper passing requests through with nothing on top "
               "(`proxy/examples/hyper_floor.rs`: no routing, header rewrite, metrics, timeouts "
               "or pool): not a proxy to run, but the floor under edgemesh's data path.", "",
               table(S, "http", [("requests/s", "rps", rps), ("p50", "p50", ms), ("p99", "p99", ms)]),
               "", ratio_line(S, "http", "rps", {"nginx": 1.2, "haproxy": 1.0}, label="requests/s"),
               ratio_line(S, "http", "p99", {"nginx": 1.0}, lower_is_better=True, label="p99 latency"),
               ""]
    if "https" in S:
        md += ["### HTTPS keep-alive (TLS 1.3, ECDSA P-256; wrk, 64 connections)", "",
               table(S, "https", [("requests/s", "rps", rps), ("p50", "p50", ms), ("p99", "p99", ms)]),
               "", ratio_line(S, "https", "rps", label="requests/s"), ""]
    if "tls_new" in S:
        for who in S["tls_new"]:
            for f in S["tls_new"][who]:
                f["per_cpu"] = f["rps"] / max(f["cpu"], 1e-9)
        md += ["### New TLS connections (full TLS 1.3 handshakes, one request each; "
               f"`proxy/examples/tls_load.rs`, {CONNS} connections at a time)", "",
               "Session resumption is off on every contender, so each connection is a full "
               "handshake. The load generator is edgemesh's own (rustls with aws-lc-rs, one thread): wrk's "
               "side of a handshake (OpenSSL, verifying the server's P-256 signature) cost "
               "about as much as the proxies' and bounded all of them near 1,500-1,900/s on "
               "the one load core. tls_load makes the client's X25519 exchange and key "
               "schedule but does not check the server's certificate or signature; it offers "
               "TLS_AES_128_GCM_SHA256 first, and every contender negotiates it. The servers' "
               "side of each handshake is unchanged.", "",
               table(S, "tls_new", [("handshakes/s", "rps", rps),
                                    ("handshakes per proxy CPU-second", "per_cpu", rps)]), "",
               ratio_line(S, "tls_new", "rps", {"nginx": 1.8}, label="handshakes/s"),
               ratio_line(S, "tls_new", "per_cpu", label="handshakes per CPU-second"), ""]
    if "h2" in S:
        md += ["### HTTP/2 over TLS (h2load, 32 connections x 10 streams)", "",
               table(S, "h2", [("requests/s", "rps", rps)]), "",
               ratio_line(S, "h2", "rps", label="requests/s"), ""]
    if "tcp_bulk" in S:
        for who in S["tcp_bulk"]:
            for f in S["tcp_bulk"][who]:
                f["per_cpu"] = f["gbs"] / max(f["cpu"], 1e-9)
        md += ["### TCP bulk throughput (iperf3, one stream, through the proxy)", "",
               "iperf3's client and server share the load core, so they can bound the rate "
               "before the proxy does; GB per proxy CPU-second compares the proxies' own cost.", "",
               table(S, "tcp_bulk", [("GB/s", "gbs", lambda v: f"{v:.2f}"),
                                     ("GB per proxy CPU-second", "per_cpu", lambda v: f"{v:.2f}")]),
               "",
               ratio_line(S, "tcp_bulk", "gbs", {"haproxy": 1.0, "socat": 2.0}, label="throughput"),
               ratio_line(S, "tcp_bulk", "per_cpu", label="GB per CPU-second"), ""]
    if "tcp_new" in S:
        md += ["### New TCP connections (one HTTP exchange each through the TCP proxy; wrk with "
               "`Connection: close`)", "",
               table(S, "tcp_new", [("connections/s", "rps", rps), ("p99", "p99", ms)]), "",
               ratio_line(S, "tcp_new", "rps", {"socat": 5.0}, label="connections/s"), ""]
    if "churn" in S:
        md += ["### Topology churn: HTTP/1.1 keep-alive while the pool changes 10 times a second", "",
               "edgemesh: `PUT /pools/app` on the admin API (published into the replicated state, "
               "as ECS discovery does); nginx: upstream file rewritten and `nginx -s reload` "
               "(SIGHUP); HAProxy: `set server` on its runtime API.", "",
               table(S, "churn", [("requests/s", "rps", rps), ("p99", "p99", ms),
                                  ("changes/s", "changes_per_s", lambda v: f"{v:.1f}")]), "",
               ratio_line(S, "churn", "rps", label="requests/s"),
               ratio_line(S, "churn", "p99", lower_is_better=True, label="p99 latency"), ""]
    if "access_log" in S:
        A = S["access_log"]

        def log_cost(off, on):
            """(ratio of the medians, median of the per-round ratios): each round runs the pair
            back to back, so a round's ratio is measured under the same load from neighbours."""
            med_ratio = med(S, "access_log", on, "rps") / med(S, "access_log", off, "rps")
            pairs = [b["rps"] / a["rps"] for a, b in zip(A[off], A[on])]
            return med_ratio, statistics.median(pairs)

        em, ng = log_cost("edgemesh", "edgemesh_log"), log_cost("nginx", "nginx_log")
        md += ["### Access log cost: HTTP/1.1 keep-alive with and without the access log", "",
               "The same configuration twice, one with the access log writing a JSON line per "
               "request to a file: edgemesh's `[access_log]`, and for reference nginx's "
               "`access_log` with the same fields (`escape=json`, 64 KiB buffer). The pairs run "
               "back to back in each round; the per-round ratio is the steadier figure on a host "
               "whose neighbours' load changes from minute to minute.", "",
               table(S, "access_log", [("requests/s", "rps", rps), ("p99", "p99", ms),
                                       ("user µs/req", "user_us", lambda v: f"{v:.2f}")]), "",
               f"- edgemesh with the log: {em[1]:.3f}x the requests/s without (median of the "
               f"per-round ratios; {em[0]:.3f}x from the medians); target >= 0.95: "
               f"{'met' if em[1] >= 0.95 else 'NOT met'}",
               f"- nginx with its log: {ng[1]:.3f}x ({ng[0]:.3f}x from the medians)", ""]
    if "memory" in S:
        tls = any("tls_held_kib" in m for m in S["memory"].values())
        md += [f"### Memory: resident set idle, and with {IDLE_CONNS:,} idle keep-alive connections", "",
               "Idle: after start-up and one request. Held: every connection has made one request "
               "and stays open. After: 2 s after they closed. nginx counts master and worker.", ""]
        if tls:
            md += ["TLS: the same over TLS 1.3 (ECDSA P-256, HTTP/1.1), measured from the RSS just "
                   "before. Where HTTP came first (MEMORY_KINDS) and `after` stayed high, the "
                   "process could reuse that memory: the TLS figure is then a lower bound.", ""]
        cols = ["HTTP: held", "per connection", "after"]
        if tls:
            cols += ["TLS: held", "per connection", "after"]
        md += ["| contender | idle RSS | " + " | ".join(cols) + " |",
               "|---|---:|" + "---:|" * len(cols)]
        mib = lambda m, k: f"{m[k] / 1024:.1f} MiB" if k in m else ""
        kib = lambda m, k: f"{m[k]:.1f} KiB" if k in m else ""
        for who, m in S["memory"].items():
            row = [mib(m, "idle_kib"), mib(m, "held_kib"), kib(m, "per_conn_kib"), mib(m, "after_kib")]
            if tls:
                row += [mib(m, "tls_held_kib"), kib(m, "tls_per_conn_kib"), mib(m, "tls_after_kib")]
            md.append(f"| {who} | " + " | ".join(row) + " |")
        e = S["memory"]["edgemesh"]["idle_kib"] / 1024
        md += ["", f"- edgemesh idle RSS: {e:.1f} MiB (target <= 20 MiB: "
                   f"{'met' if e <= 20 else 'NOT met'})", ""]
    md.append("<!-- proxy:end -->")
    return "\n".join(md)


def machine():
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    v = lambda *a: subprocess.run(a, capture_output=True, text=True)
    return {
        "Machine": f"{os.cpu_count()} x {cpu}, {mem / 1048576:.0f} GiB, Linux {os.uname().release}",
        "Layout": f"every proxy alone on CPU {PROXY_CPU} (one worker process or thread); load "
                  f"generators, backends and this script on CPU {LOAD_CPU}",
        "Backend": "nginx returning a 13-byte body (two ports, for churn); iperf3 server for bulk TCP",
        "Versions": "; ".join([
            "edgemesh " + v(EDGE, "--version").stdout.split()[1] + " (" + v("rustc", "--version").stdout.strip() + ")",
            v("nginx", "-v").stderr.strip().split(": ")[1],
            "HAProxy " + v("haproxy", "-v").stdout.split()[2],
            "socat " + re.search(r"socat version (\S+)", v("socat", "-V").stdout).group(1),
            "wrk " + v("wrk", "-v").stdout.split()[1],
            "h2load " + v("h2load", "--version").stdout.split()[1],
            v("iperf3", "--version").stdout.split("(")[0].strip(),
            v("openssl", "version").stdout.split(" (")[0].strip(),
        ]),
    }


def main():
    if sys.argv[1:2] == ["--report"]:
        # Re-renders the section from a saved run: bench/proxies.py --report bench/out/results.json
        results = json.load(open(sys.argv[2]))
        print(report(results, json.load(open(os.path.join(os.path.dirname(sys.argv[2]), "machine.json")))))
        return
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    resource.setrlimit(resource.RLIMIT_NOFILE, (_FD_HARD, _FD_HARD))
    os.makedirs(OUT, exist_ok=True)
    key, crt, pem = cert()
    procs = start_backends()
    contenders = {}
    # Fresh files each run (a run writes some GB); removed again at the end.
    log_path = os.path.join(OUT, "access.log")
    nginx_log_path = os.path.join(OUT, "nginx-access.log")

    def remove_logs():
        for f in (log_path, nginx_log_path):
            if os.path.exists(f):
                os.remove(f)

    remove_logs()
    try:
        contenders["edgemesh"] = start_edgemesh(crt, key)
        contenders["nginx"] = start_nginx(crt, key)
        contenders["haproxy"] = start_haproxy(pem)
        contenders["socat"] = start_socat()
        contenders["hyper_floor"] = start_hyper_floor()
        contenders["nginx_log"] = start_nginx_log(nginx_log_path)
        contenders["edgemesh_log"] = start_edgemesh(
            crt, key, "edgemesh_log", EDGE_LOG_ADMIN, EDGE_LOG_GOSSIP,
            f'[access_log]\nformat = "json"\npath = "{log_path}"\n')
        for c in contenders.values():
            for port in c.ports.values():
                wait_port(port, c.name)
        # The one-node mesh elects itself before its pools can be published.
        t0 = time.time()
        while time.time() - t0 < 20:
            try:
                if json.loads(edge_admin("GET", "/members")[1])["election"]["acting"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        for c in contenders.values():
            url = f"http://127.0.0.1:{c.ports['http'] if 'http' in c.ports else c.ports['tcp_new']}/"
            sh("curl", "-sf", "-o", "/dev/null", "-H", "Host: bench.test", url)
        results = {}
        mem = {who: {"idle_kib": c.rss_kib()}
               for who, c in contenders.items()}
        for scen in SCENARIOS:
            if scen == "memory":
                for who in ("edgemesh", "nginx", "haproxy"):
                    m = {}
                    for kind in MEMORY_KINDS:
                        m.update(idle_memory(contenders[who], tls=kind == "tls"))
                    mem[who].update(m)
                    print(f"memory    {who:9} " + " ".join(f"{k}={v:.4g}" for k, v in m.items()), flush=True)
                results["memory"] = mem
            else:
                rounds(scen, contenders, results)
        mach = machine()
        json.dump(mach, open(os.path.join(OUT, "machine.json"), "w"), indent=1)
        json.dump(results, open(os.path.join(OUT, "results.json"), "w"), indent=1)
        md = report(results, mach)
        print(md)
        if set(SCENARIOS) == set(ALL):
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "section.py"), "proxy"],
                           input=md, text=True, check=True)
    finally:
        for c in contenders.values():
            c.proc.terminate()
            for o in getattr(c, "others", []):
                o.terminate()
        for p in procs:
            p.terminate()
        for c in contenders.values():
            c.proc.wait()
        remove_logs()


if __name__ == "__main__":
    main()
