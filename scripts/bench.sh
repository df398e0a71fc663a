#!/usr/bin/env bash
# The benchmarks of docs/BENCHMARKS.md, in release mode. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bin weft
cargo bench -p weft-tests --bench pod_network
cargo bench -p weft-tests --bench pod_start
cargo bench -p weft-tests --bench controller
cargo bench -p weft-tests --bench cluster
cargo bench -p weft-tests --bench lb
cargo bench -p weft-tests --bench policy
cargo bench -p weft-tests --bench hostile
cargo bench -p weft-tests --bench workloads
cargo bench -p weft-tests --bench batch
cargo bench -p weft-tests --bench access
# The DNS bench's peer and load generator; Debian's knot package would start
# a knotd on the host, which the bench does not want: it runs its own.
if ! command -v knotd >/dev/null || ! command -v dnsperf >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq knot dnsperf >/dev/null
  systemctl disable --now knot.service >/dev/null 2>&1 || true
fi
cargo bench -p weft-tests --bench dns
