#!/usr/bin/env bash
# Fuzzes the gossip wire decoders (envelope, state updates, digests) with libFuzzer.
#   scripts/fuzz.sh [seconds]     (default 60)
# cargo-fuzz needs nightly features; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them.
set -euo pipefail
cd "$(dirname "$0")/../gossip/fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
RUSTC_BOOTSTRAP=1 cargo fuzz run envelope_decode -- -max_total_time="${1:-60}"
