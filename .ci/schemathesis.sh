#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a live `strata run --api-socket` with a guest running, from
# docs/openapi.yaml: any 5xx, undocumented status, wrong content type, response that does not
# match its schema, or method a path does not take answered with anything but 405 + Allow fails
# the run. schemathesis speaks TCP, so socat forwards a loopback port to the API's Unix socket.
#
# Usage: .ci/schemathesis.sh [MAX_EXAMPLES]   (after `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo ".ci/schemathesis.sh: $*" >&2
    exit 1
}

MAX_EXAMPLES=${1:-100}
VENV=${SCHEMATHESIS_VENV:-/tmp/strata-schemathesis-venv}
ST_VERSION=4.32.5
WORK=$(mktemp -d /tmp/strata-schemathesis-XXXXXX)
STRATA=target/x86_64-unknown-linux-gnu/release/strata
PORT=$((20000 + RANDOM % 20000))

[ -x "$STRATA" ] || die "$STRATA is missing: run cargo build --release first"
command -v socat >/dev/null || die "socat is missing: install the Debian package socat (.ci/run does)"

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
    python3 -m venv "$VENV" || die "python3 -m venv failed: install the Debian package python3-venv"
    "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION" || die "pip install schemathesis failed"
fi

# A guest that prints to COM1 forever: the API is fuzzed while a VM runs (when KVM is there).
GUEST_ARGS=()
if [ -c /dev/kvm ]; then
    # ELF64, one PT_LOAD at 1 MiB: mov dx, 0x3f8; mov al, 'x'; out dx, al; jmp back to the out.
    python3 - "$WORK/printer.elf" <<'EOF'
import struct, sys
code = bytes([0x66, 0xba, 0xf8, 0x03, 0xb0, 0x78, 0xee, 0xeb, 0xfd])
paddr, off = 0x100000, 64 + 56
ehdr = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, 0x3e, 1, paddr, 64, 0, 0, 64, 56, 1, 64, 0, 0)
phdr = struct.pack("<IIQQQQQQ", 1, 5, off, paddr, paddr, len(code), len(code), 0x1000)
open(sys.argv[1], "wb").write(ehdr + phdr + code)
EOF
    GUEST_ARGS=(--kernel "$WORK/printer.elf" --serial null --memory 32M)
elif [ "${CI:-}" = true ]; then
    die "/dev/kvm is absent and CI=true"
fi

SOCKET="$WORK/api.sock"
"$STRATA" run --api-socket "$SOCKET" "${GUEST_ARGS[@]}" >"$WORK/strata.out" 2>"$WORK/strata.err" &
STRATA_PID=$!
socat "TCP-LISTEN:$PORT,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$SOCKET" &
SOCAT_PID=$!
cleanup() {
    kill "$SOCAT_PID" 2>/dev/null || true
    kill "$STRATA_PID" 2>/dev/null || true
    wait "$STRATA_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for _ in $(seq 1 500); do
    [ -S "$SOCKET" ] && break
    kill -0 "$STRATA_PID" 2>/dev/null || die "strata exited: $(cat "$WORK/strata.err")"
    sleep 0.01
done
[ -S "$SOCKET" ] || die "strata never created $SOCKET"

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance

# Runs schemathesis (in the scratch directory, where it keeps its cache); extra arguments
# select operations.
SPEC=$PWD/docs/openapi.yaml
fuzz() {
    (cd "$WORK" && "$VENV/bin/st" run "$SPEC" \
        --url "http://127.0.0.1:$PORT" \
        --checks "$CHECKS" \
        --max-examples "$MAX_EXAMPLES" \
        --workers 1 \
        --no-color \
        --generation-database none \
        --request-timeout 30 \
        "$@")
}

# vmm.shutdown would end the server under test: never fuzzed. First pass: the VM is kept
# (no vm.delete, no vm.create), so boot, pause, resume, shutdown, reboot, info, counters and
# metrics meet a real VM in every state they lead to. Second pass: everything else too.
set +e
fuzz --exclude-path /api/v1/vmm.shutdown --exclude-path /api/v1/vm.delete --exclude-path /api/v1/vm.create
first=$?
fuzz --exclude-path /api/v1/vmm.shutdown
second=$?
set -e
kill -0 "$STRATA_PID" 2>/dev/null || die "strata died during the run: $(tail -5 "$WORK/strata.err")"
[ "$first" -eq 0 ] && [ "$second" -eq 0 ] || die "schemathesis found failures (exits $first, $second)"
echo ".ci/schemathesis.sh: no 5xx, no schema violation"
