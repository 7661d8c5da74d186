#!/usr/bin/env bash
# The chaos scenarios append one row each to target/chaos-report.md; this rewrites CHAOS.md's
# table (everything after its marker line) from those rows, in scenario order. Called by
# scripts/test.sh after the suite, or by hand after `cargo test -p edgemesh-chaos-tests`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -s target/chaos-report.md ] || exit 0
{
  sed '/^<!-- table -->$/q' CHAOS.md
  echo
  echo "Run of $(date -u +%Y-%m-%d) on $(nproc) cores, kernel $(uname -r), debug build:"
  echo
  echo "| scenario | invariant | result | figures |"
  echo "| --- | --- | --- | --- |"
  sort -t'|' -k2,2 -b -V -s target/chaos-report.md
} > CHAOS.md.new
mv CHAOS.md.new CHAOS.md
echo "== chaos scenarios (written to CHAOS.md)"
cat target/chaos-report.md
