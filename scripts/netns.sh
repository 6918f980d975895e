#!/usr/bin/env bash
# The test topology: a client, the load-balancer host, a switch and two
# backend hosts, each in its own network namespace.
#
#   client (198.18.0.2, 2001:db8:18::2)
#     | c-eth0 ── lb-ext
#   lb host: lbd owns lb-ext and lb-int (no kernel addresses on them)
#     | lb-int ── sw-lb
#   switch: bridge br0
#     | sw-be1 ── eth0 of be1 (198.19.1.11, 2001:db8:19:1::11)
#     | sw-be2 ── eth0 of be2 (198.19.1.12, 2001:db8:19:1::12)
#
# Usage: scripts/netns.sh up|down|nginx-up|nginx-stop N|nginx-start N|udp-up|udp-stop N|status
#        scripts/netns.sh dpdk-config FILE   (prints FILE on DPDK net_af_packet vdevs)
# LBT_CLIENT_OFFLOAD=on leaves checksum offload on at the client.
# LBT_PREFIX (default "lbt") prefixes every namespace, so several
# topologies can coexist. Addresses come only from 198.18.0.0/15 and
# 2001:db8::/32; traffic stays between these namespaces.
set -euo pipefail

P=${LBT_PREFIX:-lbt}
RUN=${LBT_RUN:-/tmp/$P}
NS_CLIENT=$P-client NS_LB=$P-lb NS_SW=$P-sw NS_BE1=$P-be1 NS_BE2=$P-be2
ALL="$NS_CLIENT $NS_LB $NS_SW $NS_BE1 $NS_BE2"

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

no_offload() {
    # Raw sockets read and write these links: no deferred checksums, no
    # segmentation offloads.
    nsx "$1" ethtool -K "$2" tx off tso off gso off gro off >/dev/null 2>&1 || true
}

up() {
    down quiet
    for ns in $ALL; do
        ip netns add "$ns"
        nsx "$ns" ip link set lo up
    done
    ip link add c-eth0 netns "$NS_CLIENT" type veth peer name lb-ext netns "$NS_LB"
    ip link add lb-int netns "$NS_LB" type veth peer name sw-lb netns "$NS_SW"
    ip link add eth0 netns "$NS_BE1" type veth peer name sw-be1 netns "$NS_SW"
    ip link add eth0 netns "$NS_BE2" type veth peer name sw-be2 netns "$NS_SW"

    nsx "$NS_SW" ip link add br0 type bridge stp_state 0 forward_delay 0
    for i in sw-lb sw-be1 sw-be2; do
        nsx "$NS_SW" ip link set "$i" master br0
        nsx "$NS_SW" ip link set "$i" up
        no_offload "$NS_SW" "$i"
    done
    nsx "$NS_SW" ip link set br0 up

    # The data plane's links: the kernel keeps out of them.
    for i in lb-ext lb-int; do
        nsx "$NS_LB" sysctl -qw "net.ipv6.conf.$i.disable_ipv6=1"
        nsx "$NS_LB" ip link set "$i" up
        no_offload "$NS_LB" "$i"
    done

    nsx "$NS_CLIENT" ip link set c-eth0 up
    if [ "${LBT_CLIENT_OFFLOAD:-off}" = on ]; then
        # The client's kernel defers its checksums (CHECKSUM_PARTIAL): the
        # data plane must complete them.
        nsx "$NS_CLIENT" ethtool -K c-eth0 tx on tso off gso off gro off >/dev/null 2>&1 || true
    else
        no_offload "$NS_CLIENT" c-eth0
    fi
    nsx "$NS_CLIENT" ip addr add 198.18.0.2/24 dev c-eth0
    nsx "$NS_CLIENT" ip addr add 2001:db8:18::2/64 dev c-eth0 nodad
    nsx "$NS_CLIENT" ip route add default via 198.18.0.1
    nsx "$NS_CLIENT" ip -6 route add default via 2001:db8:18::1

    local n=1
    for ns in "$NS_BE1" "$NS_BE2"; do
        nsx "$ns" ip link set eth0 up
        no_offload "$ns" eth0
        nsx "$ns" ip addr add "198.19.1.1$n/24" dev eth0
        nsx "$ns" ip addr add "2001:db8:19:1::1$n/64" dev eth0 nodad
        nsx "$ns" ip route add default via 198.19.1.1
        nsx "$ns" ip -6 route add default via 2001:db8:19:1::1
        n=$((n + 1))
    done
    mkdir -p "$RUN"
    echo "$P: namespaces $ALL are up"
}

nginx_conf() {
    local name=$1 dir=$2
    mkdir -p "$dir/html"
    echo "Hello World !  This is $name." >"$dir/html/index.html"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 256; }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp;
    scgi_temp_path $dir/tmp;
    server {
        listen 80;
        listen [::]:80;
        listen 8080;
        listen [::]:8080;
        root $dir/html;
        location = /whoami { default_type text/plain; return 200 "\$remote_addr\n"; }
    }
}
EOF
    mkdir -p "$dir/tmp"
}

nginx_up() {
    command -v nginx >/dev/null || {
        echo "nginx is missing: installing it" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
    }
    local n=1
    for ns in "$NS_BE1" "$NS_BE2"; do
        local dir="$RUN/be$n" name
        name=$(printf 'ECS%02d' "$n")
        nginx_conf "$name" "$dir"
        nsx "$ns" nginx -c "$dir/nginx.conf" -g "user root;"
        n=$((n + 1))
    done
}

nginx_stop() {
    local n=$1 dir="$RUN/be$1"
    if [ -f "$dir/nginx.pid" ]; then
        kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
        rm -f "$dir/nginx.pid"
    fi
}

udp_up() {
    # A UDP echo server on port 5353 of each backend: it answers
    # "ECS0N <payload>", over IPv4 and IPv6.
    local n=1
    for ns in "$NS_BE1" "$NS_BE2"; do
        local dir="$RUN/be$n"
        mkdir -p "$dir"
        # Not through nsx: $! must be the server itself (ip netns exec execs it).
        ip netns exec "$ns" python3 -c '
import select, socket, sys
name = sys.argv[1]
socks = []
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 5353))
    socks.append(s)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(65535)
        s.sendto(name.encode() + b" " + data, peer)
' "$(printf 'ECS%02d' "$n")" >/dev/null 2>&1 &
        echo $! >"$dir/udp.pid"
        n=$((n + 1))
    done
}

udp_stop() {
    local pidfile="$RUN/be$1/udp.pid"
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
}

down() {
    for ns in $ALL; do
        if ip netns list | grep -qw "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
        fi
    done
    sleep 0.2
    for ns in $ALL; do
        if ip netns list | grep -qw "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    rm -rf "$RUN"
    [ "${1:-}" = quiet ] || echo "$P: namespaces removed"
}

dpdk_config() {
    # FILE, an io = "af_packet" configuration of this topology, rewritten
    # for lbd built with --features dpdk: io = "dpdk", EAL without
    # hugepages or PCI, one net_af_packet vdev per port on the port's
    # interface (lbd runs in $NS_LB, where the vdevs find lb-ext and
    # lb-int), and each port's interface replaced by its dpdk_port.
    local file=${1:?configuration file} ifaces args i=0
    [ -f "$file" ] || { echo "no file $file" >&2; exit 2; }
    ifaces=$(sed -n 's/^interface *= *"\([^"]*\)".*/\1/p' "$file")
    [ -n "$ifaces" ] || { echo "$file: no port with an interface" >&2; exit 2; }
    args='"--no-huge", "--no-pci", "--no-shconf", "--no-telemetry", "-m", "256", "-l", "0"'
    args="$args, \"--file-prefix\", \"$P\""
    for ifc in $ifaces; do
        args="$args, \"--vdev=net_af_packet$i,iface=$ifc,qdisc_bypass=1\""
        i=$((i + 1))
    done
    local has_dp=0
    grep -q '^\[dataplane\]' "$file" && has_dp=1
    awk -v eal="eal_args = [$args]" -v seen="$has_dp" '
        BEGIN { port = 0 }
        /^\[dataplane\]/ { print; print "io = \"dpdk\""; print eal; dp = 1; seen = 1; next }
        /^\[/ {
            if (!seen) { print "[dataplane]"; print "io = \"dpdk\""; print eal; print ""; seen = 1 }
            dp = 0
        }
        dp && /^(io|eal_args) *=/ { next }
        /^interface *= *"/ { print "dpdk_port = " port; port++; next }
        { print }
    ' "$file"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    nginx-up) nginx_up ;;
    nginx-stop) nginx_stop "${2:?backend number}" ;;
    udp-up) udp_up ;;
    udp-stop) udp_stop "${2:?backend number}" ;;
    nginx-start)
        n=${2:?backend number}
        ns=$P-be$n
        nsx "$ns" nginx -c "$RUN/be$n/nginx.conf" -g "user root;"
        ;;
    status) ip netns list | grep "^$P-" || true ;;
    dpdk-config) dpdk_config "${2:?configuration file}" ;;
    *) echo "usage: $0 up|down|nginx-up|nginx-stop N|nginx-start N|udp-up|udp-stop N|status|dpdk-config FILE" >&2; exit 2 ;;
esac
