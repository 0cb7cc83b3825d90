#!/usr/bin/env bash
# Install the Debian-packaged third-party guests used by Strata's issue-4 boot tests and put
# ready-to-load copies (gunzipped where the package ships .gz) into the cache directory.
#
#   memtest86+ 6.10     /boot/memtest86+x64.bin   Linux boot protocol 2.12, 64-bit entry, not compressed
#   Xen 4.17            /boot/xen-4.17-amd64.gz   multiboot1 (and multiboot2) ELF32, gzipped
#   GNU Mach 1.8        /boot/gnumach-1.8-486.gz  multiboot1 ELF32, gzipped
#   Linux 6.1 (cloud)   /boot/vmlinuz-*-cloud-amd64  bzImage (+ /boot/initrd.img-*-cloud-amd64)
#   OVMF                /usr/share/ovmf/OVMF.fd   UEFI firmware (flash at the top of 4 GiB)
#   GRUB Invaders       /boot/invaders.exec       multiboot1 a.out kludge (package grub-invaders)
#
# Output: ${STRATA_CACHE:-$HOME/.cache/strata}/guests/ (idempotent); prints NAME=PATH lines.
# Usage: scripts/prepare-guests.sh
set -euo pipefail

cache="${STRATA_CACHE:-$HOME/.cache/strata}"
out="$cache/guests"
pkgs=(memtest86+ xen-hypervisor-4.17-amd64 gnumach-image-1.8-486 linux-image-cloud-amd64 ovmf
      grub-invaders)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) == 0 ]]; then
        apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >&2 || {
            apt-get update -q >&2
            apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >&2
        }
    else
        echo "missing packages; run as root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
fi

mkdir -p "$out"
gunzip_to() { # $1 = .gz, $2 = output
    if [[ ! -f "$2" || "$1" -nt "$2" ]]; then
        gzip -dc "$1" >"$2.tmp" && mv "$2.tmp" "$2"
    fi
}
gunzip_to /boot/xen-4.17-amd64.gz "$out/xen-4.17-amd64"
gunzip_to /boot/gnumach-1.8-486.gz "$out/gnumach-1.8-486"
cloud_kernel=$(ls -1 /boot/vmlinuz-*-cloud-amd64 | sort -V | tail -1)
cloud_initrd=/boot/initrd.img-${cloud_kernel#/boot/vmlinuz-}

echo "memtest=/boot/memtest86+x64.bin"
echo "xen=$out/xen-4.17-amd64"
echo "gnumach=$out/gnumach-1.8-486"
echo "cloud_kernel=$cloud_kernel"
echo "cloud_initrd=$cloud_initrd"
echo "ovmf=/usr/share/ovmf/OVMF.fd"
echo "invaders=/boot/invaders.exec"
