#!/usr/bin/env bash
# Gossip figures from real edgemesh processes on loopback, written into the "Mesh processes"
# section of BENCHMARKS.md (between its markers).   NODES=10 bench/mesh.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p edgemesh-node
table=$(python3 bench/mesh.py)
section=$(cat <<MD
<!-- mesh:begin -->
## Mesh processes (real edgemesh processes on loopback)

Produced by \`bench/mesh.sh\` on $(date -u +%Y-%m-%d): ${NODES:-10} release processes, default
gossip timings (probe 400 ms, RTT 150 ms, suspicion 1 s), one of them killed with SIGKILL. "At rest" is the
sealed gossip datagrams each node sends (SWIM and election heartbeats; QUIC sync not counted),
averaged over 30 s. Most of it is the leader's heartbeats to the voters (5/s each).

$table
<!-- mesh:end -->
MD
)
echo "$section" | python3 bench/section.py mesh
echo "$section"
