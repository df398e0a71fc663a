#!/bin/bash
# Watchers that replay history and read nothing (docs/BENCHMARKS.md, issue 16):
# the controller's heap and RSS. Needs root and `cargo build --release --bin weft`.
# Usage: scripts/slow-watchers.sh [WATCHERS]
cd "$(dirname "$0")/.."
W=$PWD/target/release/weft
NS=slowmem
D=$(mktemp -d)
trap 'kill $PID 2>/dev/null; ip netns del $NS 2>/dev/null; rm -rf $D' EXIT
ip netns add $NS; ip -n $NS link set lo up
ip netns exec $NS $W controller --listen 127.0.0.1:6443 --data-dir $D --kubeconfig-out $D/kubeconfig > $D/log 2>&1 &
sleep 3
PID=$(pgrep -f "data-dir $D" | head -1)
TOK=$(grep token: $D/kubeconfig | awk '{print $2}')
c(){ ip netns exec $NS curl -sk -H "Authorization: Bearer $TOK" "$@"; }
API=https://127.0.0.1:6443
big=$(python3 -c 'print("x"*1048576)')
printf '{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"mb"},"spec":{"holderIdentity":"%s"}}' "$big" > $D/lease.json
c -X POST -H 'Content-Type: application/json' --data-binary @$D/lease.json $API/apis/coordination.k8s.io/v1/namespaces/default/leases -o /dev/null -w "create %{http_code}\n"
for i in $(seq 1 300); do c -X PATCH -H 'Content-Type: application/merge-patch+json' -d "{\"metadata\":{\"labels\":{\"n\":\"$i\"}}}" $API/apis/coordination.k8s.io/v1/namespaces/default/leases/mb -o /dev/null; done
heap(){ c $API/metrics | grep "^weft_controller_heap_in_use_bytes" | awk '{printf "%d MB", $2/1048576}'; }
rss(){ awk '/VmRSS|VmHWM/ {printf "%s %d MB ", $1, $2/1024}' /proc/$PID/status; }
echo "after 300 patches: heap $(heap), $(rss)"
N=${1:-20}
ip netns exec $NS python3 - $N $TOK <<'PY' &
import socket, ssl, sys, time
n, tok = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
socks = []
for i in range(n):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096); s.connect(("127.0.0.1", 6443))
    t = ctx.wrap_socket(s)
    t.sendall(f"GET /apis/coordination.k8s.io/v1/namespaces/default/leases?watch=1&resourceVersion=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n\r\n".encode())
    socks.append(t)
time.sleep(25)
PY
PY=$!
for t in 2 4 6 8 10 12 15 20; do sleep 2; echo "t~${t}s: heap $(heap), $(rss)"; done
wait $PY
sleep 3; echo "after the clients left: heap $(heap), $(rss)"
c $API/metrics | grep closed_slow

