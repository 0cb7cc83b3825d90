#!/usr/bin/env bash
# Build a tiny Linux 6.1 guest kernel for Strata's "kernels no one here wrote" tests.
#
# Source: Debian's linux-source-6.1 package (/usr/src/linux-source-6.1.tar.xz).
# Config: `make tinyconfig` plus what is needed to boot to "Run /init as init process" on a
# 16550 serial console (ttyS0, port 0x3f8): 64BIT, PRINTK, TTY, SERIAL_8250(+CONSOLE),
# BINFMT_ELF, BLK_DEV_INITRD, an embedded initramfs (INITRAMFS_SOURCE) holding a tiny static
# /init, PVH (so vmlinux carries a XEN_ELFNOTE_PHYS32_ENTRY note), KVM_GUEST.
#
# Variants:
#   --int3-patch     (default) arch/x86/kernel/alternative.c is patched so int3_selftest()
#                    returns at once: the selftest executes `int3` in ring 0, which the KVM
#                    instruction emulator on this (PVM) host does not implement.
#   --no-int3-patch  pristine source: reproduces the emulation-fallback failure.
#   --virtio         int3 patch + the devices of issues 8, 10 and 11 (a kernel that boots from an
#                    ext4 root on virtio-blk rather than from an initramfs): virtio core, virtio-mmio
#                    (+ `virtio_mmio.device=` command-line devices), PCI (+ MMCONFIG, MSI),
#                    virtio-pci (+ legacy 0.9.5), virtio-blk, virtio-console (hvc0 console),
#                    virtio-rng, virtio-net, vsock over virtio, NET + INET + IP_PNP (`ip=`), EXT4,
#                    DEVTMPFS(+_MOUNT), SMP (NR_CPUS=8), ACPI (MADT, MCFG, power button, S5
#                    poweroff) with INPUT_EVBUG (a pressed power button is logged at KERN_DEBUG:
#                    `loglevel=8`), MAGIC_SYSRQ (Ctrl-O o on hvc0 or BREAK o on ttyS0: ACPI poweroff
#                    without user space). No embedded /init: the kernel mounts `root=` and runs
#                    /sbin/init from it (see scripts/make-rootfs.sh). No initramfs.cpio.
#                    Give `ro` with `root=`: a PVH or direct boot leaves boot_params.root_flags
#                    at 0, which makes Linux mount the root read-write. Command lines and what
#                    QEMU shows: docs/guests.md, "Linux 6.1 with virtio".
#
# Output (cached outside the checkout, idempotent):
#   ${STRATA_CACHE:-$HOME/.cache/strata}/linux-6.1-<variant>/
#     bzImage         Linux boot protocol image (LZ4-compressed payload)
#     vmlinux         ELF, PVH entry note; initramfs embedded
#     initramfs.cpio  separate (uncompressed newc) initramfs whose /init prints a different
#                     marker, to prove an external initrd was loaded (it overrides the embedded one)
#                     (not for --virtio)
#     config          the .config used
#     System.map      symbol addresses (e.g. int3_selftest_ip, where --no-int3-patch stops)
# Ring-0 code runs ~1000x slower on the PVM test host, so the config also avoids boot-time work:
# CRYPTO + CRYPTO_MANAGER_DISABLE_TESTS (otherwise lib/crypto/blake2s.c runs its selftest at
# boot: minutes under emulation), HZ_100 (periodic tick; fewer timer interrupts), no VT and no
# PTYs (registering their hundreds of devices took minutes), LZ4 payload.
# /init (embedded) prints "STRATA-INIT: hello from embedded /init" and then calls
# reboot(RESTART); with `reboot=k` the kernel then writes 0xfe to port 0x64 (i8042 reset).
# /init uses int $0x80 (IA32_EMULATION), not SYSCALL. On the PVM test host neither works from
# guest ring 3 (SYSCALL lands at LSTAR still in user mode: SIGSEGV; int $0x80 raises #UD), so
# there the kernel prints "traps: init[1] trap invalid opcode ip:401014 ..." for the embedded
# /init and "... ip:401024 ..." for the external one (16 leading nops), then panics.
# After the panic (panic=-1, reboot=k) the kernel polls port 0x64 until bit 1 is clear and
# writes 0xfe to port 0x64.
# The external initramfs /init prints "STRATA-INIT: hello from external initrd /init".
#
# The int3 patch is scripts/linux-6.1-skip-int3-selftest.patch.
#
# `make` runs under `nice -n 19` (the machine is shared); run one build at a time.
# --config-only writes $build/.config, checks it and stops (no compile; nothing in $out changes).
#
# Usage: scripts/build-linux.sh [--int3-patch|--no-int3-patch|--virtio] [--jobs N] [--force]
#                               [--config-only]
set -euo pipefail

variant=int3-patch
jobs=$(nproc)
force=0
config_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --int3-patch) variant=int3-patch ;;
        --no-int3-patch) variant=no-int3-patch ;;
        --virtio) variant=virtio ;;
        --jobs) jobs="$2"; shift ;;
        --force) force=1 ;;
        --config-only) config_only=1 ;;
        -h|--help) sed -n '2,58p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

cache="${STRATA_CACHE:-$HOME/.cache/strata}"
tarball=/usr/src/linux-source-6.1.tar.xz
src="$cache/src/linux-source-6.1"          # pristine extracted tree (shared by the variants)
tree="$cache/src/linux-6.1-$variant"         # hard-linked copy, patched per variant
build="$cache/build/linux-6.1-$variant"      # O= object directory
out="$cache/linux-6.1-$variant"              # final artefacts
here=$(cd "$(dirname "$0")" && pwd)
script_hash=$(cat "$0" "$here/linux-6.1-skip-int3-selftest.patch" | sha256sum | cut -c1-16)

log() { echo "build-linux: $*" >&2; }

print_outputs() {
    echo "bzImage=$out/bzImage"
    echo "vmlinux=$out/vmlinux"
    [[ $variant == virtio ]] || echo "initramfs=$out/initramfs.cpio"
    echo "config=$out/config"
    echo "system_map=$out/System.map"
}

if [[ $force == 0 && $config_only == 0 && -f "$out/stamp" && "$(cat "$out/stamp")" == "$script_hash" ]]; then
    log "up to date ($out)"
    print_outputs
    exit 0
fi

# --- host packages -------------------------------------------------------------------------
need_pkgs=()
for pair in gcc:build-essential make:build-essential flex:flex bison:bison bc:bc cpio:cpio \
            xz:xz-utils lz4:lz4 perl:perl patch:patch; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair#*:}")
done
[[ -f /usr/include/libelf.h ]] || need_pkgs+=(libelf-dev)
[[ -f /usr/include/openssl/ssl.h ]] || need_pkgs+=(libssl-dev)
[[ -f $tarball ]] || need_pkgs+=(linux-source-6.1)
if [[ ${#need_pkgs[@]} -gt 0 ]]; then
    mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
    if [[ $(id -u) == 0 ]]; then
        log "installing: ${need_pkgs[*]}"
        apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need_pkgs[@]}" >&2 || {
            apt-get update -q >&2
            apt-get -o DPkg::Lock::Timeout=600 install -y -q "${need_pkgs[@]}" >&2
        }
    else
        echo "missing packages; run as root: apt-get install -y ${need_pkgs[*]}" >&2
        exit 1
    fi
fi

mkdir -p "$cache/src" "$build" "$out"

# --- source ----------------------------------------------------------------------------------
if [[ ! -f "$src/.strata-extracted" ]]; then
    log "extracting $tarball"
    rm -rf "$src" "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
    touch "$src.tmp/.strata-extracted"
    mv "$src.tmp" "$src"
fi
if [[ ! -f "$tree/.strata-tree" ]]; then
    rm -rf "$tree"
    cp -al "$src" "$tree"     # hard links: cheap; files we patch are replaced, not edited in place
    alt="$tree/arch/x86/kernel/alternative.c"
    if [[ $variant != no-int3-patch ]]; then
        # Break the hard link first so the pristine copy stays untouched.
        cp "$alt" "$alt.tmp" && mv "$alt.tmp" "$alt"
        patch -s -p1 -d "$tree" <"$here/linux-6.1-skip-int3-selftest.patch"
    fi
    touch "$tree/.strata-tree"
fi

# --- the tiny /init programs ------------------------------------------------------------------
mkinit() { # $1 = output binary, $2 = message, $3 = number of leading nops
    local s="$build/$(basename "$1").S"
    cat >"$s" <<EOF
	.globl _start
	.text
_start:
	.fill	$3, 1, 0x90	/* nops: give each /init its own int 0x80 address (see above) */
	/*
	 * 32-bit system calls through "int 0x80" (CONFIG_IA32_EMULATION): on the PVM test host a
	 * SYSCALL from guest ring 3 jumps to LSTAR without leaving user mode (init then dies with
	 * "segfault at <entry_SYSCALL_64>"), while interrupts and exceptions from ring 3 work.
	 */
	mov	\$4, %eax		/* write(1, msg, len) */
	mov	\$1, %ebx
	mov	\$msg, %ecx
	mov	\$len, %edx
	int	\$0x80
	mov	\$88, %eax		/* reboot(MAGIC1, MAGIC2, LINUX_REBOOT_CMD_RESTART) */
	mov	\$0xfee1dead, %ebx
	mov	\$672274793, %ecx
	mov	\$0x01234567, %edx
	int	\$0x80
1:	ud2			/* reboot returned: die visibly ("trap invalid opcode") */
	jmp	1b
	.section .rodata
msg:	.ascii "$2\n"
	len = . - msg
EOF
    gcc -nostdlib -static -no-pie -Wl,--build-id=none -o "$1" "$s"
}
mkinit "$build/init-embedded" "STRATA-INIT: hello from embedded /init" 0
mkinit "$build/init-external" "STRATA-INIT: hello from external initrd /init" 16
cpio_list() { # $1 = init binary
    printf 'dir /dev 0755 0 0\nnod /dev/console 0600 0 0 c 5 1\nfile /init %s 0755 0 0\n' "$1"
}
cpio_list "$build/init-embedded" >"$build/initramfs-embedded.list"
cpio_list "$build/init-external" >"$build/initramfs-external.list"

# --- config ----------------------------------------------------------------------------------
kmake() { nice -n 19 make -C "$tree" O="$build" ARCH=x86_64 -j"$jobs" "$@"; }
log "configuring ($variant)"
kmake tinyconfig >/dev/null
cfg="$tree/scripts/config --file $build/.config"
$cfg -e 64BIT -e PRINTK -e EARLY_PRINTK -e TTY -e SERIAL_8250 -e SERIAL_8250_CONSOLE \
     -e BINFMT_ELF -e BLK_DEV_INITRD -e HYPERVISOR_GUEST -e PARAVIRT -e KVM_GUEST -e PVH \
     -d KERNEL_XZ -d KERNEL_GZIP -e KERNEL_LZ4 \
     -e CRYPTO -e CRYPTO_MANAGER_DISABLE_TESTS -d HZ_250 -e HZ_100 \
     -d VT -d LEGACY_PTYS -d UNIX98_PTYS -e IA32_EMULATION \
     -d RD_GZIP -d RD_BZIP2 -d RD_LZMA -d RD_XZ -d RD_LZO -d RD_LZ4 -d RD_ZSTD \
     -e INITRAMFS_COMPRESSION_NONE \
     --set-str LOCALVERSION "-strata-$variant" -d LOCALVERSION_AUTO
want=(64BIT PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE BINFMT_ELF BLK_DEV_INITRD PVH KERNEL_LZ4
      CRYPTO_MANAGER_DISABLE_TESTS HZ_100 IA32_EMULATION)
unwanted=(VT LEGACY_PTYS UNIX98_PTYS)
if [[ $variant == virtio ]]; then
    # No INITRAMFS_SOURCE: the built-in initramfs is the default one (/dev/console, /root), so
    # there is no /init and the kernel mounts root= and runs its /sbin/init.
    # Enabled: the devices and buses. Disabled: what they would otherwise pull in by default and
    # what costs boot time under ring-0 emulation (probing i8042/keyboards/mice, Intel/AMD/VIA
    # RNG probes (intel-rng pokes the firmware hub on ICH chipsets), IPv6, wireless, ethernet
    # vendor drivers, ACPI processor/thermal/fan/battery/AC drivers, cpufreq/cpuidle (SCHED_MC would
    # select intel_pstate, which selects the ACPI processor driver), HID, Intel uncore/RAPL PMUs,
    # PCI hotplug, ports, ASPM and PCI serial cards). SMP brings Tree RCU and its stall detector:
    # RCU_CPU_STALL_TIMEOUT at its maximum (300 s) keeps slow emulated stretches quiet.
    $cfg -e SMP --set-val NR_CPUS 8 --set-val RCU_CPU_STALL_TIMEOUT 300 -d SCHED_MC -d CPU_FREQ -d CPU_IDLE \
         -e PCI -e PCI_MMCONFIG -e PCI_MSI -d PCIEPORTBUS -d HOTPLUG_PCI -d VGA_ARB \
         -e ACPI -e ACPI_BUTTON -d ACPI_TINY_POWER_BUTTON -d ACPI_PROCESSOR -d ACPI_THERMAL \
         -d ACPI_FAN -d ACPI_AC -d ACPI_BATTERY -d ACPI_VIDEO -d ACPI_DOCK -d ACPI_TABLE_UPGRADE \
         -d ACPI_DEBUGGER -d ACPI_APEI -d ACPI_NFIT -d ACPI_HED -d ACPI_PCI_SLOT \
         -e INPUT -e INPUT_EVBUG -d INPUT_MOUSEDEV -d INPUT_KEYBOARD -d INPUT_MOUSE \
         -d INPUT_JOYSTICK -d INPUT_TABLET -d INPUT_TOUCHSCREEN -d INPUT_MISC -d SERIO \
         -e MAGIC_SYSRQ --set-val MAGIC_SYSRQ_DEFAULT_ENABLE 0x1 -e MAGIC_SYSRQ_SERIAL \
         -e VIRTIO_MENU -e VIRTIO -e VIRTIO_MMIO -e VIRTIO_MMIO_CMDLINE_DEVICES \
         -e VIRTIO_PCI -e VIRTIO_PCI_LEGACY \
         -e BLOCK -e VIRTIO_BLK -e VIRTIO_CONSOLE -e HVC_DRIVER \
         -e HW_RANDOM -e HW_RANDOM_VIRTIO -d HW_RANDOM_INTEL -d HW_RANDOM_AMD -d HW_RANDOM_VIA \
         -d HW_RANDOM_TIMERIOMEM -d HW_RANDOM_BA431 -d HW_RANDOM_XIPHERA \
         -e EXT4_FS -e DEVTMPFS -e DEVTMPFS_MOUNT \
         -e NET -e INET -e IP_PNP -d IPV6 -d WIRELESS -d WLAN -d ETHERNET -d PACKET -d UNIX \
         -d INET_DIAG -d NETFILTER -d SYN_COOKIES \
         -e NETDEVICES -e NET_CORE -e VIRTIO_NET \
         -e VSOCKETS -e VIRTIO_VSOCKETS -d VSOCKETS_LOOPBACK -d VSOCKETS_DIAG \
         -d HID -d PERF_EVENTS_INTEL_UNCORE -d PERF_EVENTS_INTEL_RAPL -d PERF_EVENTS_INTEL_CSTATE \
         -d PCIEASPM -d PNP_DEBUG_MESSAGES -d NETWORK_FILESYSTEMS -d SERIAL_8250_PCI \
         -d SERIAL_8250_EXAR -d SERIAL_8250_LPSS -d SERIAL_8250_MID -d SERIAL_8250_PERICOM
    want+=(SMP PCI PCI_MMCONFIG PCI_MSI ACPI ACPI_BUTTON INPUT_EVBUG MAGIC_SYSRQ VIRTIO VIRTIO_MMIO
           VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_PCI VIRTIO_PCI_LEGACY BLOCK VIRTIO_BLK VIRTIO_CONSOLE
           HVC_DRIVER HW_RANDOM HW_RANDOM_VIRTIO EXT4_FS DEVTMPFS DEVTMPFS_MOUNT NET INET IP_PNP
           VIRTIO_NET VSOCKETS VIRTIO_VSOCKETS X86_IO_APIC X86_LOCAL_APIC)
    unwanted+=(SERIO INPUT_KEYBOARD IPV6 HW_RANDOM_INTEL ACPI_PROCESSOR CPU_FREQ CPU_IDLE)
else
    $cfg --set-str INITRAMFS_SOURCE "$build/initramfs-embedded.list"
fi
kmake olddefconfig >/dev/null
for opt in "${want[@]}"; do
    grep -q "^CONFIG_$opt=y" "$build/.config" || { echo "CONFIG_$opt did not stick" >&2; exit 1; }
done
for opt in "${unwanted[@]}"; do
    grep -q "^CONFIG_$opt=y" "$build/.config" && { echo "CONFIG_$opt still set" >&2; exit 1; }
done
if [[ $config_only == 1 ]]; then
    log "config only: $build/.config"
    exit 0
fi

# --- build -----------------------------------------------------------------------------------
log "building with -j$jobs (several minutes)"
kmake bzImage >"$build/build.log" 2>&1 || { tail -40 "$build/build.log" >&2; exit 1; }
if [[ $variant != virtio ]]; then
    "$build/usr/gen_init_cpio" "$build/initramfs-external.list" >"$out/initramfs.cpio"
fi
cp "$build/arch/x86/boot/bzImage" "$out/bzImage"
cp "$build/vmlinux" "$out/vmlinux"
cp "$build/.config" "$out/config"
cp "$build/System.map" "$out/System.map"
echo "$script_hash" >"$out/stamp"
log "done"
print_outputs
