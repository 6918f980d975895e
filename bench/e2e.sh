#!/usr/bin/env bash
# Throughput of the same job done by the Linux kernel and by lbd, measured in
# one run on the same namespace topology (scripts/netns.sh):
#
#   kernel: nftables DNAT to the two backends (round robin) + SNAT to the
#           load balancer's local address (FULLNAT), and a conntrack-based
#           filter playing the listener security group (allow 80, deny 81);
#   lbd:    the seed configuration with sg-alb (allow 80, deny 81), AF_PACKET;
#   lbd over AF_XDP: the same with io = "dpdk" on DPDK net_af_xdp devices
#           bound to the same veth links (the path for NICs that stay with
#           the kernel).
#
# wrk runs from the client namespace, with keep-alive and with
# "Connection: close" (a new connection, so a new session, per request).
# Prints requests/s for the three and the ratios to the kernel.
#
# Usage: sudo bench/e2e.sh [seconds per run, default 10] [connections, default 32]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-32}

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/e2e.sh: network namespaces need root" >&2
    exit 1
fi
need=()
for t in ip:iproute2 ethtool:ethtool curl:curl nginx:nginx-light wrk:wrk nft:nftables; do
    command -v "${t%%:*}" >/dev/null || need+=("${t##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build -q --release -p lb-dataplane --features dpdk --bins
LBD=$PWD/target/release/lbd
LBCTL=$PWD/target/release/lbctl

export LBT_PREFIX=lbbench LBT_RUN=/tmp/lbbench
LB=lbbench-lb CLIENT=lbbench-client
LBD_PID=
XDP_PREFIX=lbbench-xdp$$
cleanup() {
    [ -n "$LBD_PID" ] && kill "$LBD_PID" 2>/dev/null && wait "$LBD_PID" 2>/dev/null || true
    scripts/netns.sh down >/dev/null 2>&1 || true
    rm -rf "/var/run/dpdk/$XDP_PREFIX"
}
trap cleanup EXIT
scripts/netns.sh up >/dev/null
scripts/netns.sh nginx-up

# Requests/s reported by wrk, and the share of non-2xx/errors.
run_wrk() { # label, extra wrk args...
    local label=$1
    shift
    local out rps errs
    out=$(ip netns exec "$CLIENT" wrk -t1 -c"$CONNS" -d"${DUR}s" --timeout 2s "$@" http://198.18.0.10:80/ 2>&1)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out" | tr '\n' ' ')
    echo "  $label: ${rps:-0} req/s ${errs}" >&2
    echo "${rps:-0}"
}
# Starts lbd with configuration $1 (log $2) and waits until it answers.
start_lbd() {
    ip netns exec $LB "$LBD" --config "$1" --control "$LBT_RUN/lbd.sock" 2>"$2" &
    LBD_PID=$!
    for _ in $(seq 1 50); do
        ip netns exec "$CLIENT" curl -s --max-time 1 http://198.18.0.10:80/ >/dev/null && break
        sleep 0.2
    done
}
# lbd's ports and its non-zero drop counters.
lbd_summary() {
    $LBCTL stats --control "$LBT_RUN/lbd.sock" | sed -n '1,12p'
    $LBCTL stats --json --control "$LBT_RUN/lbd.sock" | python3 -c \
        'import json, sys; s = json.load(sys.stdin); print("drops:", {k: v for k, v in s["drops"].items() if v}, "sessions created:", sum(w["sessions_created"] for w in s["workers"]))'
}
check_port81_blocked() {
    if ip netns exec "$CLIENT" curl -s --max-time 1 http://198.18.0.10:81/ >/dev/null; then
        echo "bench: port 81 is not blocked: the two setups do not do the same job" >&2
        exit 1
    fi
}

echo "== kernel (nftables DNAT + SNAT, conntrack filter)"
ip netns exec $LB sysctl -qw net.ipv4.ip_forward=1
ip netns exec $LB ip addr add 198.18.0.1/24 dev lb-ext
ip netns exec $LB ip addr add 198.18.0.10/32 dev lb-ext
ip netns exec $LB ip addr add 198.19.1.1/24 dev lb-int
ip netns exec $LB ip addr add 198.19.1.250/32 dev lb-int
ip netns exec $LB nft -f - <<'EOF'
table ip lb {
    chain prerouting {
        type nat hook prerouting priority dstnat;
        ip daddr 198.18.0.10 tcp dport { 80, 81 } dnat to numgen inc mod 2 map { 0 : 198.19.1.11, 1 : 198.19.1.12 } : 80
    }
    chain postrouting {
        type nat hook postrouting priority srcnat;
        ip daddr 198.19.1.0/24 oifname "lb-int" snat to 198.19.1.250
    }
    chain listener_sg {
        type filter hook prerouting priority mangle; policy accept;
        ct state established,related accept
        ip daddr 198.18.0.10 tcp dport 81 drop
        ip daddr 198.18.0.10 tcp dport 80 accept
    }
}
EOF
ip netns exec "$CLIENT" curl -s --max-time 2 http://198.18.0.10:80/ >/dev/null || { echo "bench: kernel path does not answer" >&2; exit 1; }
check_port81_blocked
k_keep=$(run_wrk "keep-alive")
k_close=$(run_wrk "Connection: close" -H "Connection: close")

# Hand the links over to lbd.
ip netns exec $LB nft flush ruleset
ip netns exec $LB ip addr flush dev lb-ext
ip netns exec $LB ip addr flush dev lb-int
ip netns exec $LB sysctl -qw net.ipv4.ip_forward=0
ip netns exec "$CLIENT" ip neigh flush all
for b in be1 be2; do ip netns exec lbbench-$b ip neigh flush all; done

echo "== lbd (AF_PACKET, FULLNAT, sg-alb)"
CONF=$LBT_RUN/lbd.toml
cp examples/alb-seed-deny81.toml "$CONF"
start_lbd "$CONF" "$LBT_RUN/lbd.log"
check_port81_blocked
l_keep=$(run_wrk "keep-alive")
l_close=$(run_wrk "Connection: close" -H "Connection: close")
lbd_summary
kill "$LBD_PID" && wait "$LBD_PID" 2>/dev/null || true
LBD_PID=
ip netns exec "$CLIENT" ip neigh flush all
for b in be1 be2; do ip netns exec lbbench-$b ip neigh flush all; done

echo "== lbd over AF_XDP (io = dpdk, net_af_xdp on the same links)"
XCONF=$LBT_RUN/lbd-xdp.toml
python3 - examples/alb-seed-deny81.toml "$XCONF" "$XDP_PREFIX" <<'PY'
import sys
src, dst, prefix = sys.argv[1:]
eal = ["--no-huge", "--no-pci", "--no-shconf", "--no-telemetry", "-m", "1024", "-l", "0",
       "--file-prefix", prefix,
       "--vdev=net_af_xdp0,iface=lb-ext,start_queue=0,queue_count=1",
       "--vdev=net_af_xdp1,iface=lb-int,start_queue=0,queue_count=1"]
text = open(src).read().replace('io = "af_packet"', 'io = "dpdk"\neal_args = [' + ", ".join('"%s"' % a for a in eal) + ']')
text = text.replace('interface = "lb-ext"', "dpdk_port = 0").replace('interface = "lb-int"', "dpdk_port = 1")
# Another local address: the backends still hold the previous run's
# connections from 198.19.1.250 in TIME_WAIT, and lbd picks local ports in
# the same order in every run, so new connections would collide with them.
text = text.replace('"198.19.1.250"', '"198.19.1.251"')
open(dst, "w").write(text)
PY
start_lbd "$XCONF" "$LBT_RUN/lbd-xdp.log"
check_port81_blocked
x_keep=$(run_wrk "keep-alive")
x_close=$(run_wrk "Connection: close" -H "Connection: close")
lbd_summary

ratio() { python3 -c "import sys; k=float(sys.argv[1]); l=float(sys.argv[2]); print(f'{l/k:.2f}' if k else 'n/a')" "$1" "$2"; }
echo
printf '%-22s %14s %14s %14s %10s %10s\n' "" "kernel req/s" "lbd req/s" "lbd XDP req/s" "lbd/kern" "XDP/kern"
printf '%-22s %14s %14s %14s %10s %10s\n' "keep-alive" "$k_keep" "$l_keep" "$x_keep" "$(ratio "$k_keep" "$l_keep")" "$(ratio "$k_keep" "$x_keep")"
printf '%-22s %14s %14s %14s %10s %10s\n' "Connection: close" "$k_close" "$l_close" "$x_close" "$(ratio "$k_close" "$l_close")" "$(ratio "$k_close" "$x_close")"
