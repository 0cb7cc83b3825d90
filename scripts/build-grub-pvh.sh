#!/usr/bin/env bash
# Build a GRUB 2.06 i386-xen_pvh image (an ELF with a PVH entry note, XEN_ELFNOTE_PHYS32_ENTRY)
# from Debian's grub-xen-bin package. Booted outside Xen it cannot find the Xen start-of-day
# data (no "XenVMMXenVMM" CPUID leaf / hypercall page) and stops; see docs/guests.md for where.
#
# Output: ${STRATA_CACHE:-$HOME/.cache/strata}/grub-pvh/grub-pvh.elf (idempotent; prints the path)
# Usage: scripts/build-grub-pvh.sh [--force]
set -euo pipefail

cache="${STRATA_CACHE:-$HOME/.cache/strata}"
out="$cache/grub-pvh"
moddir=/usr/lib/grub/i386-xen_pvh
modules=(normal echo halt reboot minicmd)
force=0
[[ ${1:-} == --force ]] && force=1

if [[ ! -d $moddir ]] || ! command -v grub-mkimage >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]]; then
        apt-get -o DPkg::Lock::Timeout=600 install -y -q grub-xen-bin grub-common >&2
    else
        echo "missing packages; run as root: apt-get install -y grub-xen-bin grub-common" >&2
        exit 1
    fi
fi

mkdir -p "$out"
if [[ $force == 1 || ! -f "$out/grub-pvh.elf" ]]; then
    grub-mkimage -O i386-xen_pvh -d "$moddir" -o "$out/grub-pvh.elf.tmp" -p /boot/grub "${modules[@]}"
    mv "$out/grub-pvh.elf.tmp" "$out/grub-pvh.elf"
fi
echo "grub_pvh=$out/grub-pvh.elf"
