#!/usr/bin/env bash
# Benchmark: edgemesh against nginx as an HTTP/1.1 keep-alive reverse proxy, same machine,
# same backend, same CPU budget, in one run. Writes BENCHMARKS.md.
#
#   bench/run.sh                 # 5 alternating rounds of 10 s per contender
#   ROUNDS=3 DURATION=5 bench/run.sh
#
# CPU layout on the 2-core machine: the proxy under test alone on CPU 1; wrk and the backend
# share CPU 0. Both contenders get exactly the same layout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
OUT=bench/out
PROXY_CPU=1
LOAD_CPU=0
BACKEND_PORT=18080
NGINX_PORT=18081
EDGE_PORT=18082
ADMIN_PORT=19901

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs"; exit 1; }

cargo build --release -q -p edgemesh-node
rm -rf "$OUT"; mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

nginx_conf() { # $1 = name, $2 = server block
  mkdir -p "$OUT/$1"
  cat > "$OUT/$1/nginx.conf" <<CONF
worker_processes 1;
pid $OUT/$1/nginx.pid;
error_log $OUT/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/$1;
  proxy_temp_path $OUT/$1;
  fastcgi_temp_path $OUT/$1;
  uwsgi_temp_path $OUT/$1;
  scgi_temp_path $OUT/$1;
  keepalive_requests 1000000;
  $2
}
CONF
}

# The backend: a static 13-byte answer, the same for both contenders.
nginx_conf backend "server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 'hello, world\n'; } }"
taskset -c $LOAD_CPU "$NGINX" -c "$OUT/backend/nginx.conf" -g 'daemon off;' & pids+=($!)

# nginx as the equivalent reverse proxy: pooled keep-alive upstream connections.
nginx_conf proxy "upstream app { server 127.0.0.1:$BACKEND_PORT; keepalive 128; }
  server { listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection '';
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr; } }"
taskset -c $PROXY_CPU "$NGINX" -c "$OUT/proxy/nginx.conf" -g 'daemon off;' & pids+=($!)

cat > "$OUT/edgemesh.toml" <<CONF
[node]
data_dir = "$OUT/edgemesh-data"
admin_addr = "127.0.0.1:$ADMIN_PORT"
[[listeners]]
name = "web"
addr = "127.0.0.1:$EDGE_PORT"
kind = "http"
[[routes]]
hosts = ["*"]
pool = "app"
tls = false
[pools.app]
endpoints = ["127.0.0.1:$BACKEND_PORT"]
CONF
EDGEMESH_LOG=warn taskset -c $PROXY_CPU target/release/edgemesh --config "$OUT/edgemesh.toml" \
  > "$OUT/edgemesh.log" 2>&1 & pids+=($!)

for port in $BACKEND_PORT $NGINX_PORT $EDGE_PORT; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$port/" || { echo "port $port not serving"; exit 1; }
done

# wrk prints e.g. "Requests/sec:  12345.67" and "99%    1.23ms" (with --latency).
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v } else { sub(/s$/,"",v); print v*1000 } }'; }
run_wrk() { # $1 = contender, $2 = port, $3 = round
  local f="$OUT/wrk-$1-$3.txt"
  taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: bench.test' \
    "http://127.0.0.1:$2/" > "$f"
  local rps p50 p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' "$f")
  p50=$(awk '$1=="50%" {print $2}' "$f" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' "$f" | to_ms)
  errs=$(awk '/Non-2xx|Socket errors/ {print}' "$f" | tr '\n' ' ')
  echo "$1 $3 $rps $p50 $p99" >> "$OUT/results.txt"
  printf '%-9s round %d: %10s req/s  p50 %6s ms  p99 %6s ms %s\n' "$1" "$3" "$rps" "$p50" "$p99" "$errs"
}

# Warm-up, then alternate so that drift on the machine hits both contenders alike.
taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$NGINX_PORT/" >/dev/null
taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d2s -H 'Host: bench.test' "http://127.0.0.1:$EDGE_PORT/" >/dev/null
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then
    run_wrk edgemesh $EDGE_PORT "$r"; run_wrk nginx $NGINX_PORT "$r"
  else
    run_wrk nginx $NGINX_PORT "$r"; run_wrk edgemesh $EDGE_PORT "$r"
  fi
done

edge_rss=$(awk '/VmRSS/ {print $2}' /proc/"$(pgrep -f "target/release/edgemesh --config $OUT" | head -1)"/status)
median() { sort -n | awk '{a[NR]=$1} END { if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
col() { awk -v c="$1" -v k="$2" '$1==c {print $k}' "$OUT/results.txt" | median; }
e_rps=$(col edgemesh 3); n_rps=$(col nginx 3)
e_p50=$(col edgemesh 4); n_p50=$(col nginx 4)
e_p99=$(col edgemesh 5); n_p99=$(col nginx 5)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a/b }'; }

cpu=$(awk -F: '/model name/ {gsub(/^ +/,"",$2); print $2; exit}' /proc/cpuinfo)
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`bench/run.sh\` on $(date -u +%Y-%m-%d): release build, one run, contenders"
  echo "measured alternately (${ROUNDS} rounds of ${DURATION} s each, medians shown)."
  echo
  echo "- Machine: $(nproc) x $cpu, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
  echo "- edgemesh $(target/release/edgemesh --version | awk '{print $2}') ($(rustc --version)); $("$NGINX" -v 2>&1 | sed 's/.*: //'); $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
  echo "- Layout: proxy alone on CPU $PROXY_CPU (nginx: 1 worker; edgemesh: 1 runtime thread via affinity);"
  echo "  wrk (1 thread, $CONNS keep-alive connections) and the backend (nginx, static 13-byte body) on CPU $LOAD_CPU."
  echo "- Both proxies pool keep-alive connections to the backend and set Host/X-Forwarded-For."
  echo
  echo "## HTTP/1.1 keep-alive, small response"
  echo
  echo "| contender | requests/s | p50 latency | p99 latency |"
  echo "|---|---:|---:|---:|"
  echo "| edgemesh | $e_rps | $e_p50 ms | $e_p99 ms |"
  echo "| nginx | $n_rps | $n_p50 ms | $n_p99 ms |"
  echo
  echo "| ratio (edgemesh / nginx) | requests/s | p50 | p99 |"
  echo "|---|---:|---:|---:|"
  echo "| | $(ratio "$e_rps" "$n_rps") | $(ratio "$e_p50" "$n_p50") | $(ratio "$e_p99" "$n_p99") |"
  echo
  echo "Target: requests/s ratio >= 1.00 and p99 ratio <= 1.00."
  echo "edgemesh resident memory after the run: $((edge_rss / 1024)) MiB."
  echo
  echo "### Every round"
  echo
  echo "| contender | round | requests/s | p50 ms | p99 ms |"
  echo "|---|---:|---:|---:|---:|"
  awk '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}' "$OUT/results.txt"
} > BENCHMARKS.md
echo; cat BENCHMARKS.md
