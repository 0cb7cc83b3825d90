#!/bin/sh
# Seeds the qcow2 fuzz corpora with small images made by qemu-img/qemu-io.
set -e
cd "$(dirname "$0")"
tmp=$(mktemp -d)
mk() { # name options size qemu-io-commands...
    name=$1; opts=$2; size=$3; shift 3
    qemu-img create -q -f qcow2 -o "$opts" "$tmp/$name" "$size"
    for c in "$@"; do qemu-io -f qcow2 -c "$c" "$tmp/$name" >/dev/null; done
}
mk v2.qcow2 compat=0.10,cluster_size=512 64k "write -P 1 0 2k" "write -P 2 9000 700"
mk v3.qcow2 compat=1.1,cluster_size=512 64k "write -P 1 0 2k" "write -z 4k 2k"
mk comp.qcow2 compat=1.1,cluster_size=512 16k "write -c -P 3 0 512" "write -c -P 4 1024 512"
mk zstd.qcow2 compat=1.1,cluster_size=512,compression_type=zstd 16k "write -c -P 3 0 512"
mk rc1.qcow2 compat=1.1,cluster_size=512,refcount_bits=1 32k "write -P 5 0 4k"
mk rc64.qcow2 compat=1.1,cluster_size=512,refcount_bits=64 32k "write -P 5 0 4k"
mk snap.qcow2 compat=1.1,cluster_size=512 16k "write -P 6 0 1k"
qemu-img snapshot -c s1 "$tmp/snap.qcow2"
qemu-io -f qcow2 -c "write -P 7 0 512" "$tmp/snap.qcow2" >/dev/null
for t in qcow2_read qcow2_write qcow2_check; do
    mkdir -p corpus/$t
    cp "$tmp"/*.qcow2 corpus/$t/
done
mkdir -p corpus/qcow2_decompress
rm -rf "$tmp"
