#!/usr/bin/env bash
# Prepares a real host for lbd's DPDK backend (build with --features dpdk):
# checks the CPU and IOMMU, reserves 2 MB hugepages, and binds or unbinds a
# NIC to vfio-pci (or uio_pci_generic).
#
# Usage:
#   scripts/dpdk-setup.sh --check                  report only (the default)
#   scripts/dpdk-setup.sh --hugepages N            reserve N 2 MB pages, mount hugetlbfs
#   scripts/dpdk-setup.sh --bind PCI [--driver D] [--no-iommu] [--force]
#   scripts/dpdk-setup.sh --unbind PCI             give the NIC back to its kernel driver
#   scripts/dpdk-setup.sh --status                 dpdk-devbind.py --status-dev net
#
# PCI is a full address such as 0000:03:00.0 (see `--status` or `lspci -D`).
# No NIC is touched unless --bind or --unbind names it. --bind refuses a NIC
# whose interface is up with addresses or carries the default route (you
# would lose the connection you run this over) unless --force is given.
# --driver is vfio-pci (default; needs the IOMMU on: intel_iommu=on or
# amd_iommu=on, and iommu=pt for speed, on the kernel command line) or
# uio_pci_generic. Without an IOMMU, --no-iommu turns on vfio's unsafe
# no-IOMMU mode (no DMA isolation: only on hosts you trust entirely).
set -euo pipefail

STATE_DIR=/var/lib/lb-dpdk
HUGEPAGES_SYS=/sys/kernel/mm/hugepages/hugepages-2048kB
HUGE_MNT=/dev/hugepages

ACTION=check
PCI=""
PAGES=""
DRIVER=vfio-pci
NO_IOMMU=0
FORCE=0

die() { echo "error: $*" >&2; exit 1; }
say() { echo "== $*"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case $1 in
        --check) ACTION=check ;;
        --status) ACTION=status ;;
        --hugepages) ACTION=hugepages; PAGES=${2:?--hugepages needs a count}; shift ;;
        --bind) ACTION=bind; PCI=${2:?--bind needs a PCI address}; shift ;;
        --unbind) ACTION=unbind; PCI=${2:?--unbind needs a PCI address}; shift ;;
        --driver) DRIVER=${2:?--driver needs a name}; shift ;;
        --no-iommu) NO_IOMMU=1 ;;
        --force) FORCE=1 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done

need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root"; }

check_cpu() {
    say "CPU"
    local flags missing=""
    flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
    # Debian's DPDK is built with -march=corei7: SSE4.2 and friends.
    for f in sse4_2 ssse3 popcnt; do
        case " $flags " in *" $f "*) ;; *) missing="$missing $f" ;; esac
    done
    if [ -n "$missing" ]; then
        echo "MISSING required CPU flags:$missing (DPDK will not run)"
    else
        echo "required flags present (sse4_2 ssse3 popcnt)"
    fi
    for f in avx2 avx512f pdpe1gb; do
        case " $flags " in
            *" $f "*) echo "  $f: yes" ;;
            *) echo "  $f: no" ;;
        esac
    done
    echo "  NUMA nodes: $(find /sys/devices/system/node -maxdepth 1 -name 'node[0-9]*' 2>/dev/null | wc -l)"
}

iommu_groups() { find /sys/kernel/iommu_groups -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

check_iommu() {
    say "IOMMU"
    local cmdline groups
    cmdline=$(cat /proc/cmdline)
    groups=$(iommu_groups)
    echo "kernel command line: $cmdline"
    case " $cmdline " in
        *" intel_iommu=on "*|*" amd_iommu=on "*) echo "IOMMU requested on the command line" ;;
        *) echo "no intel_iommu=on / amd_iommu=on on the command line (AMD enables it by default)" ;;
    esac
    case " $cmdline " in *" iommu=pt "*) echo "iommu=pt: yes" ;; *) echo "iommu=pt: no (recommended)" ;; esac
    if [ "$groups" -gt 0 ]; then
        echo "IOMMU active: $groups groups in /sys/kernel/iommu_groups -> vfio-pci works"
    else
        echo "IOMMU NOT active (no /sys/kernel/iommu_groups entries)."
        echo "  Fix: add intel_iommu=on iommu=pt (or amd_iommu=on iommu=pt) to GRUB_CMDLINE_LINUX"
        echo "  in /etc/default/grub, run update-grub, reboot; and enable VT-d/AMD-Vi in the firmware."
        echo "  Or, on a host you trust entirely: --bind PCI --no-iommu (vfio unsafe no-IOMMU mode)"
        echo "  or --bind PCI --driver uio_pci_generic (no isolation either)."
    fi
    for m in vfio_pci uio_pci_generic; do
        if [ -d "/sys/module/$m" ]; then echo "module $m: loaded"; else echo "module $m: not loaded"; fi
    done
    if [ -r /sys/module/vfio/parameters/enable_unsafe_noiommu_mode ]; then
        echo "vfio no-IOMMU mode: $(cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode)"
    fi
}

check_hugepages() {
    say "Hugepages (2 MB)"
    if [ -d "$HUGEPAGES_SYS" ]; then
        echo "total $(cat "$HUGEPAGES_SYS/nr_hugepages"), free $(cat "$HUGEPAGES_SYS/free_hugepages")"
    else
        echo "no 2 MB hugepage support in this kernel"
    fi
    local mounts
    mounts=$(awk '$3 == "hugetlbfs" { print $2 }' /proc/mounts)
    if [ -n "$mounts" ]; then
        echo "hugetlbfs mounted at: $mounts"
    else
        echo "hugetlbfs not mounted (--hugepages N mounts it at $HUGE_MNT)"
    fi
}

devbind() {
    if command -v dpdk-devbind.py >/dev/null 2>&1; then
        command -v dpdk-devbind.py
    elif command -v dpdk-devbind >/dev/null 2>&1; then
        command -v dpdk-devbind
    else
        return 1
    fi
}

ensure_devbind() {
    devbind >/dev/null && return 0
    say "installing the dpdk package (for dpdk-devbind.py)"
    command -v apt-get >/dev/null || die "dpdk-devbind.py is missing; install DPDK's usertools"
    DEBIAN_FRONTEND=noninteractive apt-get install -y dpdk >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y dpdk >/dev/null; }
    devbind >/dev/null || die "dpdk-devbind.py still missing after installing dpdk"
}

status() {
    say "NICs"
    if devbind >/dev/null; then
        "$(devbind)" --status-dev net
    else
        echo "dpdk-devbind.py not installed (apt-get install dpdk); PCI network devices:"
        for d in /sys/bus/pci/devices/*; do
            [ "$(cut -c1-6 "$d/class")" = "0x0200" ] || continue
            drv=none
            [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
            echo "  $(basename "$d") driver=$drv"
        done
    fi
}

check_pci() {
    [[ $PCI =~ ^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]] \
        || die "$PCI is not a full PCI address (like 0000:03:00.0)"
    [ -d "/sys/bus/pci/devices/$PCI" ] || die "no PCI device $PCI"
}

current_driver() {
    local link=/sys/bus/pci/devices/$PCI/driver
    if [ -e "$link" ]; then basename "$(readlink "$link")"; fi
}

# Refuses to take away an interface that is in use, unless --force.
check_not_in_use() {
    local net=/sys/bus/pci/devices/$PCI/net ifname
    [ -d "$net" ] || return 0
    for ifname in $(ls "$net"); do
        if ip route show default 2>/dev/null | grep -qw "dev $ifname"; then
            [ "$FORCE" -eq 1 ] || die "$ifname ($PCI) carries the default route; --force to bind anyway"
        fi
        if [ -n "$(ip -o addr show dev "$ifname" 2>/dev/null)" ] \
            && ip -o link show dev "$ifname" | grep -q 'state UP'; then
            [ "$FORCE" -eq 1 ] || die "$ifname ($PCI) is up with addresses; --force to bind anyway"
        fi
    done
}

load_driver() {
    case $DRIVER in
        vfio-pci)
            if [ "$NO_IOMMU" -eq 1 ]; then
                modprobe vfio enable_unsafe_noiommu_mode=1 2>/dev/null || true
                echo 1 > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode
                echo "warning: vfio unsafe no-IOMMU mode: the NIC can DMA anywhere in memory" >&2
            elif [ "$(iommu_groups)" -eq 0 ]; then
                die "the IOMMU is off: enable it (see --check), or use --no-iommu or --driver uio_pci_generic"
            fi
            modprobe vfio-pci
            ;;
        uio_pci_generic)
            echo "warning: uio_pci_generic gives no DMA isolation" >&2
            modprobe uio_pci_generic
            ;;
        *) die "unknown driver $DRIVER (vfio-pci or uio_pci_generic)" ;;
    esac
}

case $ACTION in
    check)
        check_cpu; check_iommu; check_hugepages; status
        ;;
    status)
        status
        ;;
    hugepages)
        need_root "--hugepages"
        [[ $PAGES =~ ^[0-9]+$ ]] || die "--hugepages needs a number"
        [ -d "$HUGEPAGES_SYS" ] || die "no 2 MB hugepage support in this kernel"
        echo "$PAGES" > "$HUGEPAGES_SYS/nr_hugepages"
        got=$(cat "$HUGEPAGES_SYS/nr_hugepages")
        [ "$got" -ge "$PAGES" ] || echo "warning: only $got of $PAGES pages could be reserved (fragmented memory)" >&2
        if ! awk '$3 == "hugetlbfs" { found = 1 } END { exit !found }' /proc/mounts; then
            mkdir -p "$HUGE_MNT"
            mount -t hugetlbfs -o pagesize=2M nodev "$HUGE_MNT"
        fi
        check_hugepages
        ;;
    bind)
        need_root "--bind"
        check_pci
        check_not_in_use
        ensure_devbind
        load_driver
        orig=$(current_driver)
        if [ "$orig" = "$DRIVER" ]; then
            echo "$PCI is already bound to $DRIVER"
        else
            mkdir -p "$STATE_DIR"
            # Remember the kernel driver for --unbind.
            [ -n "$orig" ] && echo "$orig" > "$STATE_DIR/$PCI.driver"
            "$(devbind)" -b "$DRIVER" "$PCI"
        fi
        status
        ;;
    unbind)
        need_root "--unbind"
        check_pci
        ensure_devbind
        orig=""
        [ -r "$STATE_DIR/$PCI.driver" ] && orig=$(cat "$STATE_DIR/$PCI.driver")
        if [ -n "$orig" ]; then
            "$(devbind)" -b "$orig" "$PCI"
            rm -f "$STATE_DIR/$PCI.driver"
        else
            echo "no saved kernel driver for $PCI: unbinding only (bind it with dpdk-devbind.py -b DRIVER $PCI)"
            "$(devbind)" -u "$PCI"
        fi
        status
        ;;
esac
