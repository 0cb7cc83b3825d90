#!/usr/bin/env bash
# disk::aio vs fio (io_uring) on the same file: 4 KiB random reads at QD1 and QD32
# (run by hand, never in CI; needs fio and qemu-img).
#
#   bench/disk-aio.sh
#
# Makes a 2 GiB raw file of random data and a qcow2 copy, then for O_DIRECT (the host
# device) and buffered (page cache, after one warm-up pass) reads runs fio's io_uring engine
# and disk's engine (examples/aio_bench.rs) on the raw file, and disk's engine on the qcow2
# copy (buffered only: qcow2 opens without O_DIRECT). Prints one line per run.
# Environment: DIR (default /tmp/strata-aio-bench), COUNT (reads per run, default 200000).
set -euo pipefail

DIR=${DIR:-/tmp/strata-aio-bench}
COUNT=${COUNT:-200000}
mkdir -p "$DIR"
cargo build --release -q -p disk --example aio_bench
BENCH=${CARGO_TARGET_DIR:-target}/release/examples/aio_bench

if [ ! -f "$DIR/a.raw" ]; then
    head -c $((2 << 30)) /dev/urandom > "$DIR/a.raw"
    qemu-img convert -f raw -O qcow2 "$DIR/a.raw" "$DIR/a.qcow2"
fi

fio_iops() { # direct qd
    fio --name=r --filename="$DIR/a.raw" --ioengine=io_uring --rw=randread --bs=4k \
        --direct="$1" --iodepth="$2" --number_ios="$COUNT" --size=2g --norandommap \
        --output-format=terse --terse-version=3 | awk -F';' '{print $8}'
}

cat "$DIR/a.raw" "$DIR/a.qcow2" > /dev/null  # warm the page cache for the buffered runs
for direct in 1 0; do
    for qd in 1 32; do
        mode=$([ "$direct" = 1 ] && echo direct || echo buffered)
        echo "fio io_uring   raw   $mode qd=$qd iops=$(fio_iops "$direct" "$qd")"
        "$BENCH" "$DIR/a.raw" raw "$qd" "$COUNT" "$([ "$direct" = 1 ] && echo direct)"
        if [ "$direct" = 0 ]; then
            "$BENCH" "$DIR/a.qcow2" qcow2 "$qd" "$COUNT"
        fi
    done
done
