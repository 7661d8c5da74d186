#!/usr/bin/env bash
# ECS polling at scale against the emulator (scripts/moto_ecs.py): 1,000 services, 5,000
# tasks, every API call counted. Writes the "ECS polling" section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import moto' 2>/dev/null || python3 -m pip install -q 'moto[server]==5.2.1'
out=$(cargo test -q -p edgemesh-node --test e2e ecs_scale_report -- --ignored --nocapture 2>/dev/null | grep -E '^\||^busiest')
section=$(cat <<MD
<!-- ecs:begin -->
## ECS polling (1,000 services, 5,000 tasks, emulator)

Produced by \`bench/ecs_scale.sh\` on $(date -u +%Y-%m-%d): \`moto_server\` with the project's ECS
patches (ListTasks paged by 100 as ECS does), one edgemesh node polling every 5 s. Each service
has its own task definition family and 5 awsvpc tasks. Call counts come from the emulator's
request log. Durations are the emulator's, not AWS's.

$out

A new leader describes every task (50 calls of 100) and every task definition revision once
(paced at 20 a second); after that a poll is 50 ListTasks pages, and every sixth poll describes
all tasks again to pick up health changes. DescribeTasks and DescribeContainerInstances are
paced at 10 a second with bursts of 10. Traefik's provider, for comparison, polls from every
instance and caches task definitions per task.
<!-- ecs:end -->
MD
)
echo "$section" | python3 bench/section.py ecs
echo "$section"
