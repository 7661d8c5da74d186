#!/usr/bin/env bash
# Gossip figures from the deterministic SWIM simulation (release build), written into the
# "Gossip" section of BENCHMARKS.md (between the markers, replaced on every run).
set -euo pipefail
cd "$(dirname "$0")/.."
table=$(cargo test --release -q -p edgemesh-gossip bench_report -- --ignored --nocapture 2>/dev/null | grep '^|')
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
cluster size. Shortening it trades directly against the false positives at 20% loss above.
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
