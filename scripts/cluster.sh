#!/usr/bin/env bash
# The cluster test bed: a client, an upstream router spreading the VIP over
# three lbd nodes with ECMP, and two nginx backends, each host in its own
# network namespace (README, "Cluster").
#
#   client  eth0 198.18.30.2/24
#     |
#   rt      c0 198.18.30.1/24; bridge up0 198.18.10.1/24 (ports n1 n2 n3)
#           BIRD 2: eBGP to every node (AS 65000), BFD, kernel protocol
#           with `merge paths` (ECMP), fib_multipath_hash_policy=1
#     |  up0 -- ext of each node
#   nN      lbd owns ext (198.18.10.1N) and int (198.19.2.1N); BGP runs
#           over the TAP lbd-ext; BIRD 2 (AS 6501N) includes the file lbd
#           writes; FULLNAT local address 198.19.2.2N
#     |  int -- the backend bridge
#   sw      bridge br0 (ports n1 n2 n3 be1 be2)
#   be1/be2 eth0 198.19.2.101 / 198.19.2.102, nginx on port 80
#
# VIP 198.18.20.10:80. Node N's lbd configuration is examples/cluster.toml
# with the lines marked "per node" rewritten.
#
# Usage: scripts/cluster.sh COMMAND
#   up | down | status
#   node-start N | node-stop N (SIGTERM) | node-kill N (SIGKILL)
#   drain N [lbctl drain arguments] | undrain N
#   nginx-stop N | nginx-start N
#   nexthops               the router's next hops for the VIP, one a line
#   lbctl N ARGS...        lbctl against node N's control socket
#   birdc rt|N ARGS...     birdc against the router's or node N's BIRD
#   exec HOST ARGS...      a command in HOST's namespace (client, rt, n1...)
#
# Environment:
#   LBC_PREFIX (lbc)       prefix of every namespace; several beds coexist
#   LBC_RUN (/tmp/PREFIX)  run directory (configurations, logs, sockets)
#   LBC_LBD, LBC_LBCTL     the binaries (default target/debug/lbd, lbctl)
#   LBC_BFD (1)            0: the router runs BGP without BFD (hold timer)
#   LBC_ECMP (hash)        "hash": Linux's hash-threshold multipath route;
#                          "resilient": a resilient nexthop group (see
#                          rt_sync_once); "pinned": flows stay on their
#                          node while its BGP session is up (rt_pin_setup)
#   LBC_KEEPALIVE_REQUESTS requests nginx serves on a connection before it
#                          closes it (1000000; fewer makes clients reconnect)
#   LBC_EXCEPTION (tap)    "kernel": no TAP; the node's kernel holds the
#                          ext address itself and this script writes the
#                          BIRD include (a stand-in for lbd's cluster code)
#
# Addresses come only from 198.18.0.0/15; traffic stays between these
# namespaces. Every wait is bounded.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
P=${LBC_PREFIX:-lbc}
RUN=${LBC_RUN:-/tmp/$P}
LBD=${LBC_LBD:-$REPO/target/debug/lbd}
LBCTL=${LBC_LBCTL:-$REPO/target/debug/lbctl}
EXAMPLE=${LBC_EXAMPLE:-$REPO/examples/cluster.toml}
BFD=${LBC_BFD:-1}
ECMP=${LBC_ECMP:-hash}
EXCEPTION=${LBC_EXCEPTION:-tap}
KEEPALIVE_REQUESTS=${LBC_KEEPALIVE_REQUESTS:-1000000}
NODES="1 2 3"
BACKENDS="1 2"
VIP=198.18.20.10
# BIRD runs with a real-time priority: on a loaded machine (wrk, three lbd,
# nginx on a few cores) a daemon that waits for the CPU longer than BFD's
# detection time (300 ms) takes its peer for dead, as a router's BFD in
# hardware would not.
RT_PRIO="chrt -f 10"
# The table the router's BIRD exports to in resilient mode.
RT_TABLE=100

NS_CLIENT=$P-client NS_RT=$P-rt NS_SW=$P-sw
ALL="$NS_CLIENT $NS_RT $NS_SW $P-n1 $P-n2 $P-n3 $P-be1 $P-be2"

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
ns_of() {
    case "$1" in
        client | rt | sw) echo "$P-$1" ;;
        n[1-3] | be[1-2]) echo "$P-$1" ;;
        [1-3]) echo "$P-n$1" ;;
        *) echo "unknown host $1" >&2; exit 2 ;;
    esac
}

no_offload() {
    # Raw sockets read and write these links: no deferred checksums, no
    # segmentation offloads.
    nsx "$1" ethtool -K "$2" tx off tso off gso off gro off >/dev/null 2>&1 || true
}

need() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "cluster.sh: $t is missing (CI installs it: .ci/run)" >&2; exit 3; }
    done
}

# ---------------------------------------------------------------- topology

up() {
    need ip ethtool bird birdc nginx nft chrt
    [ -x "$LBD" ] || { echo "cluster.sh: no lbd at $LBD (cargo build, or LBC_LBD)" >&2; exit 3; }
    down quiet
    mkdir -p "$RUN"
    local ns i
    for ns in $ALL; do
        ip netns add "$ns"
        nsx "$ns" ip link set lo up
    done

    # client -- router
    ip link add eth0 netns "$NS_CLIENT" type veth peer name c0 netns "$NS_RT"
    nsx "$NS_CLIENT" ip addr add 198.18.30.2/24 dev eth0
    nsx "$NS_CLIENT" ip link set eth0 up
    no_offload "$NS_CLIENT" eth0
    nsx "$NS_CLIENT" ip route add default via 198.18.30.1
    # The client's packets reach the router with the socket's flow hash
    # (a veth keeps skb->hash), which the router's multipath hash takes
    # as is; TCP picks a new random one at every retransmission timeout,
    # which would send a flow to another node whenever a packet is lost.
    # A router on a wire hashes the headers: keep each flow's hash fixed.
    nsx "$NS_CLIENT" sysctl -qw net.core.txrehash=0
    nsx "$NS_RT" ip addr add 198.18.30.1/24 dev c0
    nsx "$NS_RT" ip link set c0 up
    no_offload "$NS_RT" c0

    # router: the upstream bridge, forwarding, an L4 multipath hash
    nsx "$NS_RT" sysctl -qw net.ipv4.ip_forward=1
    nsx "$NS_RT" sysctl -qw net.ipv4.fib_multipath_hash_policy=1
    nsx "$NS_RT" ip link add up0 type bridge stp_state 0 forward_delay 0
    nsx "$NS_RT" ip addr add 198.18.10.1/24 dev up0
    nsx "$NS_RT" ip link set up0 up
    nsx "$NS_SW" ip link add br0 type bridge stp_state 0 forward_delay 0
    nsx "$NS_SW" ip link set br0 up

    for i in $NODES; do
        ns=$P-n$i
        ip link add ext netns "$ns" type veth peer name "n$i" netns "$NS_RT"
        ip link add int netns "$ns" type veth peer name "n$i" netns "$NS_SW"
        nsx "$NS_RT" ip link set "n$i" master up0
        nsx "$NS_RT" ip link set "n$i" up
        no_offload "$NS_RT" "n$i"
        nsx "$NS_SW" ip link set "n$i" master br0
        nsx "$NS_SW" ip link set "n$i" up
        no_offload "$NS_SW" "n$i"
        # The data plane's links: the kernel keeps out of them.
        for l in ext int; do
            nsx "$ns" sysctl -qw "net.ipv6.conf.$l.disable_ipv6=1"
            nsx "$ns" ip link set "$l" up
            no_offload "$ns" "$l"
        done
        if [ "$EXCEPTION" = kernel ]; then
            nsx "$ns" ip addr add "198.18.10.1$i/24" dev ext
        else
            # The TAP holds the port's address: the kernel would answer the
            # port's frames a second time. Packet sockets (lbd) read before
            # this hook.
            nsx "$ns" nft -f - <<EOF
table netdev lbd_port {
    chain ext_off { type filter hook ingress device "ext" priority 0; policy drop; }
    chain int_off { type filter hook ingress device "int" priority 0; policy drop; }
}
EOF
        fi
    done

    for i in $BACKENDS; do
        ns=$P-be$i
        ip link add eth0 netns "$ns" type veth peer name "be$i" netns "$NS_SW"
        nsx "$NS_SW" ip link set "be$i" master br0
        nsx "$NS_SW" ip link set "be$i" up
        no_offload "$NS_SW" "be$i"
        nsx "$ns" ip addr add "198.19.2.10$i/24" dev eth0
        nsx "$ns" ip link set eth0 up
        no_offload "$ns" eth0
    done

    rt_start
    for i in $BACKENDS; do nginx_start "$i"; done
    for i in $NODES; do node_start "$i"; done
    wait_nexthops 3 30
    echo "$P: cluster up (VIP $VIP via $(nexthops | tr '\n' ' '))"
}

down() {
    local ns pid
    for ns in $ALL; do
        if ip netns list | grep -qw "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
        fi
    done
    sleep 0.3
    for ns in $ALL; do
        if ip netns list | grep -qw "$ns"; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    rm -rf "$RUN"
    [ "${1:-}" = quiet ] || echo "$P: cluster removed"
}

# ---------------------------------------------------------------- router

rt_conf() {
    local bfd=off table="" i
    [ "$BFD" = 1 ] && bfd=on
    [ "$ECMP" = resilient ] && table="kernel table $RT_TABLE;"
    cat <<EOF
log "$RUN/rt/bird.log" all;
timeformat log "%F %T.%3f";
timeformat protocol "%F %T.%3f";
router id 198.18.10.1;
debug protocols { states };

protocol device { scan time 10; }

# ECMP: the equal best routes of the nodes become one multipath route.
protocol kernel {
    $table
    ipv4 { import none; export all; };
    merge paths on;
}

protocol bfd {
    interface "up0" {
        min rx interval 100 ms;
        min tx interval 100 ms;
        multiplier 3;
    };
}

template bgp lbnode {
    local 198.18.10.1 as 65000;
    hold time 3;
    keepalive time 1;
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 4;
    bfd $bfd;
    ipv4 { import all; export none; };
}
EOF
    for i in $NODES; do
        echo "protocol bgp n$i from lbnode { neighbor 198.18.10.1$i as 6501$i; }"
    done
}

rt_start() {
    mkdir -p "$RUN/rt"
    rt_conf >"$RUN/rt/bird.conf"
    [ "$ECMP" = pinned ] && rt_pin_setup
    nsx "$NS_RT" $RT_PRIO bird -c "$RUN/rt/bird.conf" -s "$RUN/rt/bird.ctl" -P "$RUN/rt/bird.pid" \
        </dev/null >/dev/null 2>>"$RUN/rt/bird.err"
    case "$ECMP" in resilient | pinned) rt_sync_start ;; esac
    return 0
}

# Pinned mode: the router remembers each client flow's node. The first
# packet of a flow goes by the ECMP route; its node (the route's next hop)
# is stored in the flow's conntrack mark; later packets follow the mark
# through a per-node table, as long as that node's BGP session is up (set
# "alive", kept by rt_sync_alive). A node that withdraws the VIP (drain)
# keeps its flows; a dead node's flows fall back to ECMP at once.
rt_pin_setup() {
    local i
    for i in $NODES; do
        nsx "$NS_RT" ip route add default via "198.18.10.1$i" dev up0 table "1$i"
        nsx "$NS_RT" ip rule add fwmark "1$i" lookup "1$i" priority 100
    done
    nsx "$NS_RT" nft -f - <<EOF
table ip lbc {
    set alive { type mark; }
    chain pre {
        type filter hook prerouting priority mangle;
        iifname "c0" ct state established,related ct mark @alive meta mark set ct mark
    }
    chain post {
        type filter hook postrouting priority mangle;
        oifname "up0" ct state new ct mark set rt ip nexthop map { 198.18.10.11 : 11, 198.18.10.12 : 12, 198.18.10.13 : 13 }
    }
}
EOF
}

# Resilient mode. BIRD programs routes with nexthops inline; it has no
# nexthop objects, so it exports to table $RT_TABLE and rt_sync_loop
# mirrors each multipath route there into the main table as a resilient
# nexthop group: when a node leaves, only its buckets move, the flows on
# the other nodes stay where they are. Nexthop N is the gateway ending in
# .N; the group of a destination is 1000 + its last octet.
#
# rt_sync_once: the whole table at once (at the start), in the router's
# namespace: one listing of table $RT_TABLE, one batch of changes.
rt_sync_once() {
    if [ "$ECMP" = pinned ]; then
        rt_sync_alive
        return
    fi
    local want
    want=$({ ip -o route show table "$RT_TABLE" proto bird 2>/dev/null || true; } | awk '
        { dst = $1; sub("/.*", "", dst); n = split(dst, o, "."); m = ""
          for (i = 2; i <= NF; i++) if ($(i - 1) == "via") {
              g = $i; k = split(g, q, "."); id = q[k]
              if (!(id in seen)) { seen[id] = 1; print "nexthop replace id " id " via " g " dev up0" }
              m = m (m == "" ? "" : "/") id
          }
          if (m != "") {
              print "nexthop replace id " 1000 + o[n] " group " m " type resilient buckets 64 idle_timer 1 unbalanced_timer 0"
              print "route replace " $1 " nhid " 1000 + o[n] " proto static"
          }
        }')
    # Destinations BIRD no longer routes.
    want+=$'\n'$({ ip -o route show proto static || true; } | awk -v want="$want" '
        /nhid/ { if (index(want, "route replace " $1 " ") == 0) print "route del " $1 }')
    echo "$want" | grep . | ip -force -batch - || true
}

# Pinned mode: the nodes whose BGP session is established keep their flows.
rt_sync_alive() {
    local up
    up=$(birdc -s "$RUN/rt/bird.ctl" show protocols 2>/dev/null |
        awk '$2 == "BGP" && $NF == "Established" && $1 ~ /^n[0-9]$/ { sub("n", "1", $1); printf "%s%s", sep, $1; sep = ", " }')
    { echo "flush set ip lbc alive"; [ -z "$up" ] || echo "add element ip lbc alive { $up }"; } | nft -f - || true
}

# The loop of `rt-sync`: a sync per burst of changes in BIRD's routes,
# until `ip monitor` ends (`down` kills it).
rt_sync_loop() {
    local k line dst
    local -A burst
    set +e
    rt_sync_once
    # One `ip -batch` for the loop's life: a change costs no process start.
    exec 3> >(ip -force -batch - >/dev/null)
    ip -o monitor route | grep --line-buffered " proto bird" | while read -r line; do
        if [ "$ECMP" = pinned ]; then
            for ((k = 0; k < 100; k++)); do read -r -t 0.005 _ || break; done
            rt_sync_alive
            continue
        fi
        # The burst's last word on each destination (BIRD may delete a route
        # before it adds the new one), at most 100 lines.
        burst=()
        for ((k = 0; k < 100; k++)); do
            [[ "$line" == *" table $RT_TABLE "* ]] && { dst=${line#Deleted }; burst[${dst%% *}]=$line; }
            read -r -t 0.005 line || break
        done
        for dst in "${!burst[@]}"; do rt_route_cmds "${burst[$dst]}"; done >&3
    done
}

# The batch commands that mirror one `ip -o monitor` line of table
# $RT_TABLE into the main table.
rt_route_cmds() {
    local dst gw id ids=""
    # shellcheck disable=SC2086 # the line's words
    set -- $1
    if [ "$1" = Deleted ]; then
        echo "route del $2 proto static"
        return
    fi
    dst=$1
    while [ $# -gt 1 ]; do
        if [ "$1" = via ]; then
            gw=$2 id=${2##*.}
            echo "nexthop replace id $id via $gw dev up0"
            ids+=${ids:+/}$id
        fi
        shift
    done
    [ -n "$ids" ] || return 0
    id=${dst%/*}
    id=$((1000 + ${id##*.}))
    echo "nexthop replace id $id group $ids type resilient buckets 64 idle_timer 1 unbalanced_timer 0"
    echo "route replace $dst nhid $id proto static"
}

rt_sync_start() {
    nsx "$NS_RT" bash "$0" rt-sync </dev/null >/dev/null 2>>"$RUN/rt/sync.err" &
    echo $! >"$RUN/rt/sync.pid"
}

# The router's next hops for the VIP in the table the kernel forwards
# with, one address a line.
nexthops() {
    local route id m
    route=$(nsx "$NS_RT" ip -o route show "$VIP/32")
    if [[ "$route" == *nhid* ]]; then
        id=$(word_after nhid <<<"$route")
        for m in $(nsx "$NS_RT" ip -o nexthop show id "$id" | word_after group | tr '/' ' '); do
            nsx "$NS_RT" ip -o nexthop show id "${m%%,*}" | word_after via
        done | sort
    else
        word_after via <<<"$route" | sort
    fi
}

# Every word that follows WORD on standard input.
word_after() {
    awk -v w="$1" '{ for (i = 1; i < NF; i++) if ($i == w) print $(i + 1) }'
}

# Waits at most SECS seconds until the VIP has COUNT next hops.
wait_nexthops() {
    local want=$1 secs=$2 n i
    for ((i = 0; i < secs * 10; i++)); do
        n=$(nexthops | grep -c . || true)
        [ "$n" = "$want" ] && return 0
        sleep 0.1
    done
    echo "cluster.sh: the VIP has $n next hops after ${secs}s, not $want" >&2
    status >&2 || true
    return 1
}

# ---------------------------------------------------------------- nodes

# Node N's lbd configuration: examples/cluster.toml with the "per node"
# lines rewritten (the stand-in mode drops the TAP and the [cluster] part).
node_conf() {
    local i=$1 bfd=false
    [ "$BFD" = 1 ] && bfd=true
    sed -e "s|^bfd = true|bfd = $bfd|" \
        -e "s|\"198\.18\.10\.11/24\"|\"198.18.10.1$i/24\"|" \
        -e "s|\"198\.19\.2\.11/24\"|\"198.19.2.1$i/24\"|" \
        -e "s|\"198\.19\.2\.21\"|\"198.19.2.2$i\"|" \
        -e "s|^node_id = 1 |node_id = $i |" \
        -e "s|^asn = 65011 |asn = 6501$i |" \
        -e "s|^bird_config = \"[^\"]*\"|bird_config = \"$RUN/n$i/bird-lbd.conf\"|" \
        -e "s|^bird_socket = \"[^\"]*\"|bird_socket = \"$RUN/n$i/bird.ctl\"|" \
        "$EXAMPLE" |
        if [ "$EXCEPTION" = kernel ]; then
            sed -e '/^tap = /d' -e '/^\[cluster\]/,$d'
        else
            cat
        fi
}

# The stand-in for the include file lbd writes: BFD, the BGP session to
# the router and the routes to announce.
standin_include() {
    local i=$1 bfd=off
    [ "$BFD" = 1 ] && bfd=on
    cat <<EOF
protocol bfd lbd_bfd {
    interface "ext" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
}
protocol static lbd_static {
    ipv4;
    route $VIP/32 via "ext";
    route 198.19.2.2$i/32 via "ext";
}
protocol bgp lbd_peer1 {
    local 198.18.10.1$i as 6501$i;
    neighbor 198.18.10.1 as 65000;
    hold time 3;
    keepalive time 1;
    connect delay time 1;
    connect retry time 2;
    error wait time 1, 4;
    bfd $bfd;
    ipv4 { import none; export where proto = "lbd_static"; };
}
EOF
}

bird_running() {
    local pidfile=$1
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

node_start() {
    local i=${1:?node number} ns dir k
    ns=$(ns_of "$i")
    dir=$RUN/n$i
    mkdir -p "$dir"
    node_conf "$i" >"$dir/lbd.toml"
    if ! bird_running "$dir/bird.pid"; then
        if [ "$EXCEPTION" = kernel ]; then
            standin_include "$i" >"$dir/bird-lbd.conf"
        else
            # lbd writes it before it serves; BIRD needs a file to start.
            [ -f "$dir/bird-lbd.conf" ] || echo "# written by lbd" >"$dir/bird-lbd.conf"
        fi
        cat >"$dir/bird.conf" <<EOF
log "$dir/bird.log" all;
timeformat log "%F %T.%3f";
router id 198.18.10.1$i;
protocol device { scan time 1; }
include "$dir/bird-lbd.conf";
EOF
        nsx "$ns" $RT_PRIO bird -c "$dir/bird.conf" -s "$dir/bird.ctl" -P "$dir/bird.pid" \
            </dev/null >/dev/null 2>>"$dir/bird.err"
    fi
    if [ "$EXCEPTION" = kernel ] && ! nsx "$ns" ip -o addr show dev ext | grep -q "198.18.10.1$i/"; then
        nsx "$ns" ip addr add "198.18.10.1$i/24" dev ext
    fi
    # `ip netns exec` execs lbd in place: $! is lbd.
    ip netns exec "$ns" "$LBD" --config "$dir/lbd.toml" --control "$dir/lbd.sock" \
        </dev/null >/dev/null 2>>"$dir/lbd.log" &
    echo $! >"$dir/lbd.pid"
    for ((k = 0; k < 100; k++)); do
        if "$LBCTL" stats --control "$dir/lbd.sock" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$(cat "$dir/lbd.pid")" 2>/dev/null || break
        sleep 0.1
    done
    echo "cluster.sh: lbd on node $i did not come up:" >&2
    tail -n 20 "$dir/lbd.log" >&2 || true
    return 1
}

# Whether process PID runs (a zombie does not).
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

node_signal() {
    local i=${1:?node number} sig=$2 dir pid k
    dir=$RUN/n$i
    [ -f "$dir/lbd.pid" ] || { echo "cluster.sh: node $i runs no lbd" >&2; return 1; }
    pid=$(cat "$dir/lbd.pid")
    kill "-$sig" "$pid" 2>/dev/null || true
    # Until it is gone or a zombie (its parent may be gone too).
    for ((k = 0; k < 100; k++)); do
        alive "$pid" || break
        sleep 0.05
    done
    if alive "$pid"; then
        echo "cluster.sh: lbd on node $i ignored SIG$sig" >&2
        return 1
    fi
    rm -f "$dir/lbd.pid"
    # Stand-in: the address goes with the process, as the TAP does.
    if [ "$EXCEPTION" = kernel ]; then
        nsx "$(ns_of "$i")" ip addr del "198.18.10.1$i/24" dev ext 2>/dev/null || true
    fi
}

# ---------------------------------------------------------------- backends

nginx_start() {
    local i=$1 dir=$RUN/be$1
    mkdir -p "$dir/html" "$dir/tmp"
    echo "Hello World !  This is ECS0$i." >"$dir/html/index.html"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_timeout 300s;
    keepalive_requests $KEEPALIVE_REQUESTS;
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp;
    scgi_temp_path $dir/tmp;
    server {
        listen 80;
        root $dir/html;
        location = /whoami { default_type text/plain; return 200 "\$remote_addr\n"; }
    }
}
EOF
    nsx "$P-be$i" nginx -c "$dir/nginx.conf" -g "user root;"
}

nginx_stop() {
    local dir=$RUN/be$1
    if [ -f "$dir/nginx.pid" ]; then
        kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
        rm -f "$dir/nginx.pid"
    fi
}

# ---------------------------------------------------------------- status

status() {
    local i
    echo "== router: $VIP via: $(nexthops | tr '\n' ' ')"
    nsx "$NS_RT" birdc -s "$RUN/rt/bird.ctl" show protocols 2>&1 | sed 's/^/   /' || true
    for i in $NODES; do
        echo "== node $i"
        if [ -S "$RUN/n$i/lbd.sock" ] && "$LBCTL" stats --control "$RUN/n$i/lbd.sock" >/dev/null 2>&1; then
            "$LBCTL" stats --control "$RUN/n$i/lbd.sock" 2>&1 | head -n 12 | sed 's/^/   /'
        else
            echo "   lbd not running"
        fi
        nsx "$P-n$i" birdc -s "$RUN/n$i/bird.ctl" show protocols 2>&1 | sed 's/^/   /' || true
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    node-start) node_start "${2:?node number}" ;;
    node-stop) node_signal "${2:?node number}" TERM ;;
    node-kill) node_signal "${2:?node number}" KILL ;;
    drain)
        i=${2:?node number}; shift 2
        if [ "$EXCEPTION" = kernel ]; then
            # Stand-in: the node's BIRD withdraws its routes, the session stays.
            nsx "$(ns_of "$i")" birdc -s "$RUN/n$i/bird.ctl" disable lbd_static >/dev/null
        else
            "$LBCTL" drain --control "$RUN/n$i/lbd.sock" "$@"
        fi
        ;;
    undrain)
        i=${2:?node number}
        if [ "$EXCEPTION" = kernel ]; then
            nsx "$(ns_of "$i")" birdc -s "$RUN/n$i/bird.ctl" enable lbd_static >/dev/null
        else
            "$LBCTL" undrain --control "$RUN/n$i/lbd.sock"
        fi
        ;;
    nginx-stop) nginx_stop "${2:?backend number}" ;;
    nginx-start) nginx_start "${2:?backend number}" ;;
    nexthops) nexthops ;;
    rt-sync) rt_sync_loop ;;
    wait-nexthops) wait_nexthops "${2:?count}" "${3:-30}" ;;
    lbctl) i=${2:?node number}; shift 2; "$LBCTL" "$@" --control "$RUN/n$i/lbd.sock" ;;
    birdc)
        h=${2:?rt or node number}; shift 2
        if [ "$h" = rt ]; then sock=$RUN/rt/bird.ctl; else sock=$RUN/n$h/bird.ctl; fi
        nsx "$(ns_of "$h")" birdc -s "$sock" "$@"
        ;;
    exec) h=${2:?host}; shift 2; nsx "$(ns_of "$h")" "$@" ;;
    *) sed -n '22,43p' "$0" >&2; exit 2 ;;
esac
