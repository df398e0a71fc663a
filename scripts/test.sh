#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test with the
# real kernel, runc and tools. Needs root (network namespaces, eBPF, runc).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The default members: everything but the eBPF crate, which agent/build.rs
# builds for the BPF target.
cargo build --all-targets
# No module of a crate may import one that imports it back.
for crate in agent api cli controller dns lab; do
    python3 scripts/import-graph.py "$crate/src" >/dev/null ||
        { python3 scripts/import-graph.py "$crate/src" | grep cycle; exit 1; }
done
# --no-fail-fast: one failure must not hide the others.
cargo test --no-fail-fast -- --test-threads=2
