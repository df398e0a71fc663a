#!/usr/bin/env bash
# Installs what Weft needs to build and run on Debian 12, idempotently:
# Debian packages (runc, busybox-static, LLVM 22 for bpf-linker, test tools),
# rust-src on nightly and bpf-linker for the eBPF programs.
set -euo pipefail

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: run as root (it installs packages)" >&2; exit 1; }

PKGS=(runc busybox-static iproute2 llvm-22-dev libpolly-22-dev clang-22 libzstd-dev
      bind9-dnsutils containernetworking-plugins docker-registry
      protobuf-compiler etcd-server iptables nftables python3 python3-venv)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust with rustup first" >&2; exit 1; }
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain (eBPF programs need -Z build-std)"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi
if ! command -v bpf-linker >/dev/null || ! bpf-linker --version >/dev/null 2>&1; then
  log "building bpf-linker against LLVM 22 (a few minutes, once)"
  PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker --no-default-features --features llvm-22
else
  log "bpf-linker present"
fi
# The official Kubernetes Python client, for the tests that drive Weft with
# it (tests/tests/clients.rs), in a venv of its own: Debian's Python is
# externally managed.
PYENV=/opt/weft/python
PYCLIENT=37.0.3
if ! "$PYENV/bin/python" -c "import kubernetes, sys; sys.exit(kubernetes.__version__ != '$PYCLIENT')" 2>/dev/null; then
  log "installing the Kubernetes Python client $PYCLIENT in $PYENV"
  mkdir -p "$(dirname "$PYENV")"
  /usr/bin/python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check "kubernetes==$PYCLIENT"
else
  log "Kubernetes Python client $PYCLIENT present"
fi
log "done"
