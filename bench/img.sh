#!/usr/bin/env bash
# strata img vs qemu-img: convert and bench timings (run by hand, never in CI).
#
#   cargo build --release -p strata && bench/img.sh
#
# Makes a 2 GiB raw image with random data in half of its 1 MiB chunks (a fixed random
# choice) and a qcow2 copy, then times each command RUNS times for both tools and prints
# the medians and the strata/qemu-img ratio. Environment: RUNS (default 5), DIR (scratch,
# default /tmp/strata-img-bench), STRATA (default target/x86_64-unknown-linux-gnu/release/strata or
# $CARGO_TARGET_DIR/release/strata), SKIP_CONVERT (set: only the bench comparisons).
set -euo pipefail

RUNS=${RUNS:-5}
DIR=${DIR:-/tmp/strata-img-bench}
STRATA=${STRATA:-${CARGO_TARGET_DIR:-target}/release/strata}
[ -x "$STRATA" ] || { echo "build first: cargo build --release -p strata ($STRATA missing)"; exit 1; }
mkdir -p "$DIR"

if [ ! -f "$DIR/src.raw" ]; then
    echo "making $DIR/src.raw (2 GiB, 50% random data in 1 MiB chunks)"
    python3 - "$DIR/src.raw" <<'PY'
import os, random, sys
rng = random.Random(1)
with open(sys.argv[1], "wb") as f:
    f.truncate(2 << 30)
    for i in range(2048):
        if rng.random() < 0.5:
            f.seek(i << 20)
            f.write(os.urandom(1 << 20))
PY
    qemu-img convert -f raw -O qcow2 "$DIR/src.raw" "$DIR/src.qcow2"
fi

# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# time_cmd OUT CMD...: "wall cpu" seconds for one run (OUT is removed first; the source is
# in the page cache for both tools). cpu = user + system time of the command.
time_cmd() {
    local out=$1; shift
    rm -f "$out"
    sync
    /usr/bin/time -f "%e %U %S" -o "$DIR/time" "$@" >/dev/null
    awk '{printf "%s %.2f\n", $1, $2 + $3}' "$DIR/time"
}

# compare NAME OUT "QEMU CMD" "STRATA CMD": median wall and cpu seconds of each tool
compare() {
    local name=$1 out=$2 qcmd=$3 scmd=$4 q s i qw qc sw sc
    q=$(for i in $(seq "$RUNS"); do time_cmd "$out" $qcmd; done)
    s=$(for i in $(seq "$RUNS"); do time_cmd "$out" $scmd; done)
    qw=$(echo "$q" | awk '{print $1}' | median); qc=$(echo "$q" | awk '{print $2}' | median)
    sw=$(echo "$s" | awk '{print $1}' | median); sc=$(echo "$s" | awk '{print $2}' | median)
    printf '%-38s wall: qemu-img %7.2f s strata %7.2f s ratio %.2f | cpu: qemu-img %7.2f s strata %7.2f s\n' \
        "$name" "$qw" "$sw" "$(echo "$sw / $qw" | bc -l)" "$qc" "$sc"
}

# bench lines print "Run completed in X seconds."; every run starts from a fresh copy of the
# source image, so write runs allocate the same clusters for both tools.
bench_time() {
    cp "$DIR/src.qcow2" "$DIR/bench.qcow2"
    "$@" | sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p'
}
compare_bench() {
    local name=$1 args=$2 q s i
    q=$(for i in $(seq "$RUNS"); do bench_time qemu-img bench $args; done | median)
    s=$(for i in $(seq "$RUNS"); do bench_time "$STRATA" img bench $args; done | median)
    printf '%-40s qemu-img %8.3f s  strata %8.3f s  ratio %.2f\n' "$name" "$q" "$s" "$(echo "$s / $q" | bc -l)"
}

echo "$(date -u), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "runs: $RUNS, strata: $STRATA, $(qemu-img --version | head -1)"
O=$DIR/out
if [ -z "${SKIP_CONVERT:-}" ]; then
compare "convert qcow2 -> raw" $O "qemu-img convert -f qcow2 -O raw $DIR/src.qcow2 $O" \
    "$STRATA img convert -f qcow2 -O raw $DIR/src.qcow2 $O"
compare "convert raw -> qcow2" $O "qemu-img convert -f raw -O qcow2 $DIR/src.raw $O" \
    "$STRATA img convert -f raw -O qcow2 $DIR/src.raw $O"
compare "convert raw -> qcow2 -c (zlib)" $O "qemu-img convert -c -f raw -O qcow2 $DIR/src.raw $O" \
    "$STRATA img convert -c -f raw -O qcow2 $DIR/src.raw $O"
compare "convert raw -> vmdk streamOptimized" $O \
    "qemu-img convert -f raw -O vmdk -o subformat=streamOptimized $DIR/src.raw $O" \
    "$STRATA img convert -f raw -O vmdk -o subformat=streamOptimized $DIR/src.raw $O"

fi

# 4 KiB requests spread over the image: a large odd step (7919 * 4 KiB) wraps around the
# 2 GiB image, so consecutive requests land far apart (qemu-img bench has no random mode).
STEP=$((7919 * 4096))
compare_bench "bench qcow2 4k reads (200k)" "-f qcow2 -c 200000 -s 4096 -S $STEP $DIR/bench.qcow2"
compare_bench "bench qcow2 4k writes (50k)" "-f qcow2 -w -c 50000 -s 4096 -S $STEP $DIR/bench.qcow2"
echo "done $(date -u), load: $(cut -d' ' -f1-3 /proc/loadavg)"
