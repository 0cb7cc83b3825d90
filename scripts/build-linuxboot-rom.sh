#!/usr/bin/env bash
# Assemble Strata's linuxboot option ROM (vmm/src/firmware/linuxboot.S) into the 512-byte
# vmm/src/firmware/linuxboot.bin that the VMM embeds (committed, so building Strata needs no
# assembler). The VMM fills in the ROM's and the PnP header's checksums at run time.
# Usage: scripts/build-linuxboot-rom.sh
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/vmm/src/firmware"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
as --32 -o "$tmp/linuxboot.o" "$dir/linuxboot.S"
ld -m elf_i386 -Ttext 0 -e _start -o "$tmp/linuxboot.elf" "$tmp/linuxboot.o"
objcopy -O binary -j .text "$tmp/linuxboot.elf" "$dir/linuxboot.bin"
size=$(stat -c %s "$dir/linuxboot.bin")
[[ $size == 512 ]] || { echo "linuxboot.bin is $size bytes, not 512" >&2; exit 1; }
echo "$dir/linuxboot.bin"
