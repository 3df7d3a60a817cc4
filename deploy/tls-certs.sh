#!/usr/bin/env bash
# Makes the TLS material of the TLS variants (a CA, node and client certificates) with
# `weir certs`, reusing the CA in DIR when there is one:
#
#   deploy/tls-certs.sh compose [DIR]      # DIR default deploy/certs: nodes weir-1..3 (+ localhost)
#   deploy/tls-certs.sh kubernetes [DIR]   # pods weir-0..2 of the StatefulSet, files named by pod
#
# then see README.md ("Run a cluster with Docker", TLS) or deploy/kubernetes/README.md (TLS).
# The keys are written readable by the containers' unprivileged user (uid 65532): these are
# throwaway certificates for a laptop; production keys belong in the orchestrator's secret store.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
weir="${WEIR_BIN:-$root/target/release/weir}"
mode="${1:-}"
[ -x "$weir" ] || { echo "no $weir: run cargo build --release -p weir first" >&2; exit 1; }
case "$mode" in
  compose)
    dir="${2:-$root/deploy/certs}"
    "$weir" certs --dir "$dir" --client admin \
      --node 1=weir-1,localhost,127.0.0.1 --node 2=weir-2,localhost,127.0.0.1 \
      --node 3=weir-3,localhost,127.0.0.1
    ;;
  kubernetes)
    dir="${2:-$root/deploy/kubernetes/certs}"
    args=()
    for i in 0 1 2; do
      id=$((i + 1))
      args+=(--node "$id=weir-$i.weir-headless,weir-$i.weir-headless.default.svc.cluster.local,weir,weir.default.svc.cluster.local,localhost,127.0.0.1")
    done
    "$weir" certs --dir "$dir" --client admin "${args[@]}"
    # The StatefulSet finds its files by pod name: weir-0 is node 1.
    for i in 0 1 2; do
      cp "$dir/node-$((i + 1)).pem" "$dir/weir-$i.pem"
      cp "$dir/node-$((i + 1)).key" "$dir/weir-$i.key"
    done
    ;;
  *)
    echo "usage: $0 compose|kubernetes [DIR]" >&2
    exit 2
    ;;
esac
chmod 0755 "$dir"
chmod 0644 "$dir"/*.key
chmod 0600 "$dir/ca.key"
echo "TLS material in $dir (client certificate of the super user: client-admin.pem)"
