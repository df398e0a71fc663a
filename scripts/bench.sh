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
