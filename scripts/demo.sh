#!/usr/bin/env bash
# The demo: a 3-node lab cluster (a controller and three agents in network
# namespaces on this machine), the web app of examples/ (a Deployment of
# busybox httpd and a Service), its pods spread over the nodes, a request
# from a pod on one node to a pod on another, requests through the Service's
# VIP spread over the pods by the eBPF load-balancer, cluster DNS, two
# departments isolated by NetworkPolicy (a request that passes, one that is
# refused, and why), then teardown. Installs what
# it needs first. Needs root. `--keep` leaves the lab up to play with.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[[ "${1:-}" == "--keep" ]] && keep=true
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --bin weft
WEFT="${CARGO_TARGET_DIR:-./target}/debug/weft"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

$WEFT lab down >/dev/null   # idempotent: start from a clean slate
trap '$keep || $WEFT lab down >/dev/null' EXIT
step weft lab up --nodes 3
$WEFT lab up --nodes 3
step weft get nodes -o wide
$WEFT get nodes -o wide
step weft apply -f examples/
$WEFT apply -f examples/

step "weft get pods -o wide   # until the 3 replicas are Ready"
for _ in $(seq 1 60); do
  ready=$($WEFT get pods -l app=web --no-headers 2>/dev/null | awk '$2=="1/1" && $3=="Running"' | wc -l || true)
  [[ "$ready" -ge 3 ]] && break
  sleep 0.5
done
$WEFT get pods -o wide
$WEFT get endpoints web

# A pod on the first node asks a pod on another node, by pod IP.
read -r from from_node < <($WEFT get pods -l app=web -o wide --no-headers | awk 'NR==1{print $1, $7}')
read -r to to_ip to_node < <($WEFT get pods -l app=web -o wide --no-headers | awk -v n="$from_node" '$7!=n{print $1, $6, $7; exit}')
step "weft exec $from -- wget -qO- http://$to_ip/   # $from_node -> $to_node"
$WEFT exec "$from" -- wget -qO- "http://$to_ip/"
# Through the Service: the ClusterIP is translated by the eBPF programs.
vip=$($WEFT get service web --no-headers | awk '{print $3}')
step "weft exec $from -- sh -c 'for i in 1 2 3 4 5 6; do wget -qO- http://$vip/; done'   # the Service VIP"
$WEFT exec "$from" -- sh -c "for i in 1 2 3 4 5 6; do wget -qO- http://$vip/; done"
step "weft exec $from -- sh -c 'nslookup web.default.svc.cluster.local; wget -qO- http://web/'   # by name: the node's DNS"
$WEFT exec "$from" -- sh -c 'nslookup web.default.svc.cluster.local; wget -qO- http://web/'
step "weft lb show --node $from_node web   # what the node's eBPF maps hold"
$WEFT lb show --node "$from_node" web

# Two departments (examples/departments.yaml): default deny in each, and one
# allow rule from sales to finance's api.
for _ in $(seq 1 60); do
  ready=$( { $WEFT get pods -n sales --no-headers; $WEFT get pods -n finance --no-headers; } 2>/dev/null | awk '$2=="1/1" && $3=="Running"' | wc -l || true)
  [[ "$ready" -ge 4 ]] && break
  sleep 0.5
done
step "weft get networkpolicies -A"
$WEFT get networkpolicies -A
step "weft exec -n sales desk -- wget -qO- http://api.finance/   # allowed by finance/allow-sales"
$WEFT exec -n sales desk -- wget -qO- http://api.finance/
step "weft exec -n finance desk -- timeout 3 wget -qO- http://api.sales/   # sales lets nothing in"
if $WEFT exec -n finance desk -- timeout 3 wget -qO- http://api.sales/; then
  echo "unexpected: the request passed" >&2
  exit 1
fi
echo "(refused: no answer within 3 s)"
step "weft policy trace finance/desk sales/api 80/TCP"
$WEFT policy trace finance/desk sales/api 80/TCP
step "weft policy show finance/api"
$WEFT policy show finance/api
step "weft logs $to --tail 1"
$WEFT logs "$to" --tail 1
step "weft top pods   # CPU and memory from the pods' cgroups"
sleep 4
$WEFT top pods

if $keep; then
  echo
  echo "The lab stays up (kubeconfig ~/.weft/config); remove it with: $WEFT lab down"
else
  step weft lab down
fi
