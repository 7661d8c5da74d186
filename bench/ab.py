#!/usr/bin/env python3
"""Two edgemesh builds side by side, in one run: A/B rounds of one wrk scenario, alternating
which goes first. For a change to the data path: release-build A, copy the binary and its
meshctl aside, build B.

  python3 bench/ab.py DIR_A DIR_B [ROUNDS] [http|https|tls_new|tls_load]  # default 8 rounds, http

tls_new is wrk with `Connection: close`, which wrk's own handshakes bound; tls_load is
proxy/examples/tls_load, the proxies bench's new-TLS-connection load (full handshakes).

Each DIR holds `edgemesh` and `meshctl`. Prints per build the medians of requests/s, the
proxy's user and kernel CPU time per request and p99; then B/A of requests/s per round and
their median. The rounds move by up to 10% on this host, so read the median of many.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxies as P  # noqa: E402

USAGE = "usage: bench/ab.py DIR_A DIR_B [ROUNDS] [http|https|tls_new|tls_load]"


def urls(c, scenario):
    if scenario == "http":
        return f"http://127.0.0.1:{c.ports['http']}/", []
    if scenario == "https":
        return f"https://127.0.0.1:{c.ports['https']}/", []
    if scenario in ("tls_new", "tls_load"):
        return f"https://127.0.0.1:{c.ports['https']}/", ["-H", "Connection: close"]
    sys.exit(USAGE)


def main():
    if len(sys.argv) < 3:
        sys.exit(USAGE)
    dirs = sys.argv[1:3]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    scenario = sys.argv[4] if len(sys.argv) > 4 else "http"
    for d in dirs:
        for f in ("edgemesh", "meshctl"):
            if not os.access(os.path.join(d, f), os.X_OK):
                sys.exit(f"bench/ab.py: no executable {f} in {d}")
    os.sched_setaffinity(0, {int(P.LOAD_CPU)})
    os.makedirs(P.OUT, exist_ok=True)
    # B runs as the access-log contender's ports and names, without the log.
    names = ["edgemesh", "edgemesh_log"]
    admins = [(P.EDGE_ADMIN, P.EDGE_GOSSIP), (P.EDGE_LOG_ADMIN, P.EDGE_LOG_GOSSIP)]
    key, crt, _ = P.cert()
    backends = P.start_backends()
    builds = {}
    try:
        for name, d, (admin, gossip) in zip(names, dirs, admins):
            P.EDGE, P.MESHCTL = os.path.join(d, "edgemesh"), os.path.join(d, "meshctl")
            builds[name] = P.start_edgemesh(crt, key, name, admin, gossip)
        for c in builds.values():
            for port in c.ports.values():
                P.wait_port(port, c.name)
        time.sleep(3)  # the one-node mesh elects itself and publishes its pools
        for c in builds.values():  # warm-up
            P.wrk(*urls(c, scenario), duration=2)
        res = {n: [] for n in names}
        P.DURATION = 5  # tls_load's length; wrk's is given per call
        for r in range(rounds):
            for n in names if r % 2 == 0 else names[::-1]:
                c = builds[n]
                c.alive()
                (u0, k0), t0 = c.cpu_secs(), time.time()
                if scenario == "tls_load":
                    x = P.tls_load(c.ports["https"])
                else:
                    x = P.wrk(*urls(c, scenario), duration=5)
                (u1, k1), elapsed = c.cpu_secs(), time.time() - t0
                done = x["rps"] * elapsed
                res[n].append({"rps": x["rps"], "user": (u1 - u0) / done * 1e6,
                               "kernel": (k1 - k0) / done * 1e6, "p99": x["p99"]})
        for label, n, d in zip("AB", names, dirs):
            med = {k: statistics.median(v[k] for v in res[n]) for k in res[n][0]}
            print(f"{label} {d}: {med['rps']:,.0f} requests/s, {med['user']:.2f} + "
                  f"{med['kernel']:.2f} µs CPU per request (user + kernel), p99 {med['p99']:.2f} ms")
        ratios = [b["rps"] / a["rps"] for a, b in zip(res[names[0]], res[names[1]])]
        print("B/A requests/s per round:", " ".join(f"{x:.3f}" for x in ratios),
              f"| median {statistics.median(ratios):.3f}")
    finally:
        for c in builds.values():
            c.proc.terminate()
        for p in backends:
            p.terminate()


if __name__ == "__main__":
    main()
