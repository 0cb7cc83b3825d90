#!/usr/bin/env bash
# Make a tiny ext4 root file system image for the `--virtio` Linux guest (scripts/build-linux.sh)
# to mount from virtio-blk with `root=/dev/vda`: raw and qcow2.
#
# Contents (unless --from DIR):
#   /strata-marker   one line, "STRATA-ROOTFS-MARKER v1", for host-side checks
#                    (`debugfs -R 'cat /strata-marker' IMAGE`)
#   /sbin/init       static x86-64 ELF: 32 nops, write(1, "STRATA-INIT: hello from ext4 root
#                    /sbin/init\n") and reboot(LINUX_REBOOT_CMD_POWER_OFF) through `int $0x80`
#                    (32-bit ABI), then `ud2`. On hosts where ring 3 can enter the kernel it prints
#                    that line on the console and powers the machine off (ACPI S5 when the kernel
#                    has ACPI). On the PVM test host `int $0x80` raises #UD: the kernel prints
#                    `traps: init[1] trap invalid opcode ip:401034 ` (0x401034: this /init's first
#                    `int $0x80`; the initramfs ones trap at 0x401014 and 0x401024), which proves
#                    it read /sbin/init from the ext4 root, then panics.
#   /sbin/idle       static ELF that spins in ring 3 (`pause; jmp`) and never enters the kernel:
#                    with `init=/sbin/idle` the kernel stays up (it answers ping, logs the power
#                    button, takes SysRq from the console) on any host.
#   /dev /proc /sys /tmp  empty directories (devtmpfs is mounted on /dev after the root).
# The file system: ext4 with mke2fs's defaults (journal, extents, 64bit, metadata_csum), 4 KiB
# blocks, label "strata-root", a fixed UUID and hash seed, files owned by root.
#
# Output (idempotent, cached outside the checkout unless --out):
#   ${STRATA_CACHE:-$HOME/.cache/strata}/rootfs/   (or --out DIR)
#     rootfs.ext4   raw image
#     rootfs.qcow2  the same, `qemu-img convert -O qcow2`
# The script checks both with `e2fsck -fn` and `qemu-img check` before printing their paths.
#
# Usage: scripts/make-rootfs.sh [--from DIR] [--out DIR] [--size MIB] [--force]
#   --from DIR   use DIR's contents instead of the ones above
#   --out DIR    write the images to DIR (e.g. a test's temporary directory; always rebuilt)
#   --size MIB   image size (default 32)
# Prints: raw=PATH qcow2=PATH (one per line)
set -euo pipefail

from=""
out=""
size=32
force=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --from) from="$2"; shift ;;
        --out) out="$2"; force=1; shift ;;
        --size) size="$2"; shift ;;
        --force) force=1 ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[[ $size =~ ^[0-9]+$ && $size -ge 8 ]] || { echo "--size must be a number of MiB >= 8" >&2; exit 2; }
[[ -z $from || -d $from ]] || { echo "--from $from: not a directory" >&2; exit 2; }

cache="${STRATA_CACHE:-$HOME/.cache/strata}"
out="${out:-$cache/rootfs}"
raw="$out/rootfs.ext4"
qcow2="$out/rootfs.qcow2"
stamp_key=$( { cat "$0"; echo "$from $size"; } | sha256sum | cut -c1-16)

log() { echo "make-rootfs: $*" >&2; }
print_outputs() {
    echo "raw=$raw"
    echo "qcow2=$qcow2"
}

if [[ $force == 0 && -z $from && -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp_key" ]]; then
    log "up to date ($out)"
    print_outputs
    exit 0
fi

# --- host packages -------------------------------------------------------------------------
need_pkgs=()
for pair in mkfs.ext4:e2fsprogs e2fsck:e2fsprogs qemu-img:qemu-utils gcc:build-essential; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
    if [[ $(id -u) == 0 ]]; then
        log "installing: ${need_pkgs[*]}"
        apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need_pkgs[@]}" >&2
    else
        echo "missing packages; run as root: apt-get install -y ${need_pkgs[*]}" >&2
        exit 1
    fi
fi

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- contents --------------------------------------------------------------------------------
if [[ -n $from ]]; then
    root="$from"
else
    root="$work/root"
    mkdir -p "$root/sbin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
    echo "STRATA-ROOTFS-MARKER v1" >"$root/strata-marker"
    cat >"$work/init.S" <<'EOF'
	.globl _start
	.text
_start:
	.fill	32, 1, 0x90	/* nops: the first int $0x80 is at 0x401034 (see the header) */
	mov	$4, %eax		/* write(1, msg, len) */
	mov	$1, %ebx
	mov	$msg, %ecx
	mov	$len, %edx
	int	$0x80
	mov	$88, %eax		/* reboot(MAGIC1, MAGIC2, LINUX_REBOOT_CMD_POWER_OFF) */
	mov	$0xfee1dead, %ebx
	mov	$672274793, %ecx
	mov	$0x4321fedc, %edx
	int	$0x80
1:	ud2			/* reboot returned: die visibly ("trap invalid opcode") */
	jmp	1b
	.section .rodata
msg:	.ascii "STRATA-INIT: hello from ext4 root /sbin/init\n"
	len = . - msg
EOF
    cat >"$work/idle.S" <<'EOF'
	.globl _start
	.text
_start:
1:	pause			/* ring 3 forever, no system call: the kernel stays up */
	jmp	1b
EOF
    for prog in init idle; do
        gcc -nostdlib -static -no-pie -Wl,--build-id=none -o "$root/sbin/$prog" "$work/$prog.S"
    done
    # Check the address the header promises (a different assembler could move it).
    addr=$(objdump -d "$root/sbin/init" | awk '/int +\$0x80/ { sub(":", "", $1); print $1; exit }')
    [[ $addr == 401034 ]] || { echo "/sbin/init: first int \$0x80 at 0x$addr, not 0x401034" >&2; exit 1; }
fi

# --- image -----------------------------------------------------------------------------------
log "mkfs.ext4 -d $root ($size MiB)"
rm -f "$raw.tmp" "$qcow2.tmp"
mkfs.ext4 -q -F -b 4096 -L strata-root -U 5d4a7c2e-0b1f-4e6a-9c3d-2f8e1a6b7c90 \
    -E hash_seed=0f3c9a2b-6d4e-4b7a-8c1f-5e2d9a0b3c4d,root_owner=0:0 \
    -d "$root" "$raw.tmp" "${size}M" >&2
e2fsck -fn "$raw.tmp" >"$work/e2fsck.log" 2>&1 || { cat "$work/e2fsck.log" >&2; exit 1; }
qemu-img convert -f raw -O qcow2 "$raw.tmp" "$qcow2.tmp"
qemu-img check -q -f qcow2 "$qcow2.tmp"
mv "$raw.tmp" "$raw"
mv "$qcow2.tmp" "$qcow2"
[[ -n $from ]] || echo "$stamp_key" >"$out/stamp"
log "done"
print_outputs
