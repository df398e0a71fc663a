#!/usr/bin/env bash
# Fuzzes the DNS server's request path with libFuzzer (cargo-fuzz, nightly)
# for SECONDS (default 300). Needs the nightly toolchain scripts/setup.sh
# installs. The test suite runs the same path on 20 000 mutated messages.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${1:-300}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p fuzz/corpus/dns_request
# Seeds: a few well-formed queries (the first byte picks transport and sender).
if [ -z "$(ls -A fuzz/corpus/dns_request)" ]; then
  python3 - <<'PY'
import struct, os
def q(name, qtype):
    out = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for l in name.split("."):
        out += bytes([len(l)]) + l.encode()
    return out + b"\0" + struct.pack(">HH", qtype, 1)
seeds = [("web.default.svc.cluster.local", 1), ("_pg._tcp.db.default.svc.cluster.local", 33),
         ("example.org.team.svc.cluster.local", 1), ("10.0.96.10.in-addr.arpa", 12),
         ("db.default.svc.cluster.local", 1)]
for i, (n, t) in enumerate(seeds):
    for mode in range(4):
        open(f"fuzz/corpus/dns_request/seed-{i}-{mode}", "wb").write(bytes([mode]) + q(n, t))
PY
fi
cd fuzz
cargo +nightly fuzz run dns_request corpus/dns_request -- -max_total_time="$seconds" -rss_limit_mb=2048
