#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs
# formatting and lint checks, unit tests and the end-to-end suite (real edgemesh processes,
# real clients over loopback). Used as is by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# curl with HTTP/2 (nghttp2) drives one of the end-to-end tests.
# dnsmasq is the DNS server the DNS-pool tests query; pebble (with pebble-challtestsrv) is
# Let's Encrypt's test CA the ACME tests order from.
# iproute2 and nftables build the chaos tests' network namespaces and their faults.
# testssl.sh grades an HTTPS listener's TLS posture.
if ! command -v curl >/dev/null 2>&1 || ! curl -V | grep -q HTTP2 \
  || ! command -v dnsmasq >/dev/null 2>&1 || ! command -v pebble >/dev/null 2>&1 \
  || ! command -v ip >/dev/null 2>&1 || ! command -v nft >/dev/null 2>&1 \
  || ! command -v testssl >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl dnsmasq-base pebble \
    iproute2 nftables testssl.sh
fi
# The AWS API emulator the ECS tests talk to (scripts/moto_ecs.py patches its ECS model;
# the patches were written against this version).
if ! python3 -c 'import moto, flask; assert moto.__version__ == "5.2.1"' >/dev/null 2>&1; then
  python3 -m pip install -q 'moto[server]==5.2.1'
fi
# The CloudFormation linter CI runs on deploy/edgemesh.yaml.
if ! python3 -c 'import importlib.metadata as m; assert m.version("cfn-lint") == "1.51.0"' \
  >/dev/null 2>&1; then
  python3 -m pip install -q 'cfn-lint==1.51.0'
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    rustup component add "$c"
  fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cfn-lint deploy/edgemesh.yaml"
python3 -c 'from cfnlint.runner import main; main()' deploy/edgemesh.yaml
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
log=$(mktemp)
rm -f target/chaos-report.md target/testssl-report.md
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The hyper carried in vendor/hyper (see its PATCHES.md): its own unit tests, patches applied.
echo "== hyper's unit tests (vendor/hyper)"
cargo test --manifest-path vendor/hyper/Cargo.toml --target-dir target/vendor-hyper \
  --lib --features full 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
set -e
scripts/chaos-report.sh
if [ -s target/testssl-report.md ]; then
  { echo "# testssl.sh against edgemesh"; echo; echo "Written by scripts/test.sh from the end-to-end test \`hardening::testssl_finds_nothing_high_or_critical\`; the test fails on any HIGH or CRITICAL finding."; echo; cat target/testssl-report.md; } > TESTSSL.md
  echo "== testssl.sh summary (written to TESTSSL.md)"
  head -14 target/testssl-report.md
fi
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
