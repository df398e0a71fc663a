#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test with the
# real kernel, runc and tools. Needs root (network namespaces, eBPF, runc).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
