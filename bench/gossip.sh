#!/usr/bin/env bash
# Gossip figures from the deterministic SWIM simulation (release build), written into the
# "Gossip" section of BENCHMARKS.md (between the markers, replaced on every run).
set -euo pipefail
cd "$(dirname "$0")/.."
report() { cargo test --release -q -p edgemesh-gossip bench_report -- --ignored --nocapture 2>/dev/null | grep '^|' | sed 's/^| members |/\n&/'; }
# 1000 simulated nodes take several minutes on 2 cores.
table=$(SIM_SIZES=10,50,100,200,1000 report)
# The same scenarios with memberlist's LAN defaults, the published reference.
memberlist=$(SIM_SIZES=10,50,100,200 SIM_PROFILE=memberlist report)
section=$(cat <<MD
<!-- gossip:begin -->
## Gossip (SWIM over foca, simulated)

Produced by \`bench/gossip.sh\` on $(date -u +%Y-%m-%d). Deterministic simulation (seeded),
delivery takes 1-5 ms. One node crashes; detection is the time until each survivor is notified.
"Change reaches all" publishes five updates from different nodes and waits until every node
holds each; anti-entropy (a digest push-pull with a random member every 30 s, as the QUIC sync
does) runs beside the broadcasts, so an update the broadcasts miss shows up as a long maximum.
"At rest" counts SWIM payload plus envelope and seal (51 bytes per datagram).

### edgemesh defaults (probe 400 ms, RTT 150 ms, suspicion 1 s, 5 indirect probes, 6 x log10(n+1) retransmissions)

$table

### memberlist LAN defaults (probe 1 s, RTT 500 ms, suspicion 4 x log10(n) s, 3 indirect probes, 4 x log10(n+1) retransmissions)

$memberlist

Targets from the gossip issue, with edgemesh's defaults:
- detection p50 <= 2 s and p99 <= 5 s at 50 nodes: see the 50-node row above;
- zero false positives at 10% loss: see the loss table (each minute is one seeded run of 60 s
  of random loss on every datagram; the mesh is configured for its size);
- <= 2 KB/s per node at rest with 100 nodes: see the 100-node row.

A member that holds another suspect tells it so directly every probe period, and a suspect
answers the member that told it (Lifeguard's buddy system). Before that, suspicions travelled
as broadcasts only, and small meshes lost live members under loss: at 5 members, 64 of 500
minutes at 20% loss and 155 of 300 at 30% had a false "down"; at 20 members, 25 of 100 at 20%.

SWIM's analysis puts the first detection of a failure at about e/(e-1) = 1.58 protocol periods
on average, then the suspicion timeout and its dissemination follow. memberlist's LAN profile
(1 s period, suspicion scaled by log n) therefore detects in several seconds; edgemesh probes
faster and suspects for a fixed second, which edge hosts in one VPC (round trips about 1 ms)
afford, and sends each update more often so fewer members wait for anti-entropy.
<!-- gossip:end -->
MD
)
echo "$section" | python3 bench/section.py gossip
echo "$section"
