#!/usr/bin/env bash
# edgemesh side by side with nginx, HAProxy and socat on this machine, in one run: builds the
# release binaries, installs the contenders and load generators if missing, runs every
# scenario (bench/proxies.py) and writes the proxy section of BENCHMARKS.md.
#
#   bench/run.sh                          # 3 alternating rounds of 10 s per contender
#   ROUNDS=5 DURATION=10 bench/run.sh
#   SCENARIOS=http,tls_new bench/run.sh   # a subset, printed only
#
# Needs 2 CPUs: the proxy under test alone on CPU 1, everything else on CPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
for tool in nginx:nginx haproxy:haproxy socat:socat wrk:wrk h2load:nghttp2-client \
  iperf3:iperf3 openssl:openssl curl:curl taskset:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
export PATH="$PATH:/usr/sbin"
[ "$(nproc --all)" -ge 2 ] || { echo "needs 2 CPUs"; exit 1; }

cargo build --release -q -p edgemesh-node
cargo build --release -q -p edgemesh-proxy --example hyper_floor --example tls_load
exec python3 bench/proxies.py
