#!/usr/bin/env bash
# Builds pktgen-dpdk 23.06.1 against the system DPDK (Debian's libdpdk-dev 22.11) and prints the binary's path.
#   scripts/pktgen/build.sh [BUILD_DIR]      (default: /tmp/pktgen-23.06.1)
# The source is release 23.06.1 of Pktgen-DPDK (BSD-3-Clause, LICENSE inside the
# tarball; without its sample pcap files), the last release that builds against
# DPDK 22.11, with one change already applied: a port whose driver cannot set
# the MTU (net_memif) goes on instead of aborting.
# Needs root for apt-get the first time. About 10 s of compiling on two cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-/tmp/pktgen-23.06.1}
need=()
for p in meson ninja-build pkg-config libdpdk-dev liblua5.3-dev libpcap-dev libnuma-dev libbsd-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x "$dir/build/app/pktgen" ]; then
    rm -rf "$dir" && mkdir -p "$(dirname "$dir")"
    tar -xzf "$here/pktgen-23.06.1.tar.gz" -C "$(dirname "$dir")"
    [ "$(dirname "$dir")/pktgen-23.06.1" = "$dir" ] || mv "$(dirname "$dir")/pktgen-23.06.1" "$dir"
    # The Lua library's meson target misses DPDK's include path in this release: pass it in CFLAGS.
    (cd "$dir" && CFLAGS="$(pkg-config --cflags libdpdk)" meson setup build -Denable_lua=true >/dev/null \
        && ninja -C build >/dev/null)
fi
echo "$dir/build/app/pktgen"
