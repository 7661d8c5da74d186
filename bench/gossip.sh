#!/usr/bin/env bash
# Gossip figures from the deterministic SWIM simulation (release build), written into the
# "Gossip" section of BENCHMARKS.md (between the markers, replaced on every run).
set -euo pipefail
cd "$(dirname "$0")/.."
report() { cargo test --release -q -p edgemesh-gossip bench_report -- --ignored --nocapture 2>/dev/null | grep '^|'; }
# 1000 simulated nodes take about 5 minutes on 2 cores.
table=$(SIM_SIZES=10,50,100,200,1000 report)
# Faster timings (probe period / probe RTT / suspicion, ms): the trade-off the defaults sit on.
sweep=""
for cfg in "500 200 1000" "400 150 1200"; do
  set -- $cfg
  sweep+=$'\n'"#### probe ${1} ms, probe RTT ${2} ms, suspicion ${3} ms"$'\n\n'
  sweep+=$(SIM_SIZES=10,50,100,200 SIM_PROBE_MS=$1 SIM_RTT_MS=$2 SIM_SUSPECT_MS=$3 report)$'\n'
done
section=$(cat <<MD
<!-- gossip:begin -->
## Gossip (SWIM over foca, simulated)

Produced by \`bench/gossip.sh\` on $(date -u +%Y-%m-%d). Deterministic simulation (seeded),
memberlist LAN defaults for the cluster size with 5 indirect probes. Delivery takes 1-5 ms.
One node crashes; detection is the time until each survivor is notified. "At rest" counts
SWIM payload plus envelope and seal (51 bytes per datagram).

$table

Targets from the gossip issue:
- detection p50 <= 2 s and p99 <= 5 s at 50 nodes: **not met** with these defaults;
- zero false positives at 10% loss: met;
- <= 2 KB/s per node at rest with 100 nodes: met.

Detection is dominated by the suspicion timeout that memberlist's LAN profile derives from the
cluster size. For comparison, SWIM's analysis puts the first detection of a failure at about
e/(e-1) = 1.58 protocol periods on average, then the suspicion timeout and its dissemination
follow; memberlist's LAN defaults (1 s period, suspicion scaled by log n) therefore detect in
several seconds, as measured here.

### Faster timings (same scenarios)
$sweep
Faster probing meets the detection target at 50 nodes (400/150/1200) but in that run one
broadcast did not reach all 100 nodes within 60 s without loss (the simulation has no QUIC
anti-entropy, which would deliver it). The defaults stay at memberlist's until that is
understood.
<!-- gossip:end -->
MD
)
python3 - "$section" <<'PY'
import re, sys
section = sys.argv[1]
path = "BENCHMARKS.md"
text = open(path).read()
if "<!-- gossip:begin -->" in text:
    text = re.sub(r"<!-- gossip:begin -->.*<!-- gossip:end -->", lambda _: section, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
echo "$section"
