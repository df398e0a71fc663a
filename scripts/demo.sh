#!/usr/bin/env bash
# The demo: a two-node lab (network namespaces on this machine), a busybox
# web server pod on each node, and a request from one pod to the other
# across nodes. Installs what it needs first. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --bin weft
WEFT=./target/debug/weft
$WEFT lab down >/dev/null   # idempotent: start from a clean slate
$WEFT lab up --nodes 2 --pods examples/pods.yaml
echo
$WEFT lab pods
ip2=$($WEFT lab pods | awk '$2=="web-2"{print $4}')
echo
echo "\$ weft lab exec web-1 -- wget -qO- http://$ip2/    # from a pod on n1 to a pod on n2"
$WEFT lab exec web-1 -- wget -qO- "http://$ip2/"
echo
echo "The lab stays up; remove it with: $WEFT lab down"
