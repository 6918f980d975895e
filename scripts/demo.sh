#!/usr/bin/env bash
# The demo: the seed ALB scenario (shared/seeds/alb-security-group-listener-
# ports.txt) on a namespace topology, with lbd on its default AF_PACKET
# backend and real nginx backends.
#
#   step 5  no security group on the load balancer: ports 80 and 81 answer
#   step 6  sg-alb allows 80, denies 81 (applied by live reload)
#   step 7  sg-alb denies 80 and 81 (live reload)
#   then    step 5 again, a backend stops, traffic moves to the healthy one
#
# Everything it builds is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: network namespaces need root: sudo $0" >&2
    exit 1
fi
need=()
for t in ip:iproute2 ethtool:ethtool curl:curl nginx:nginx-light; do
    command -v "${t%%:*}" >/dev/null || need+=("${t##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "demo: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "demo: building lbd and lbctl (release)"
cargo build -q --release -p lb-dataplane --bins
LBD=$PWD/target/release/lbd
LBCTL=$PWD/target/release/lbctl

export LBT_PREFIX=lbdemo LBT_RUN=/tmp/lbdemo
RUN=$LBT_RUN
LBD_PID=
cleanup() {
    [ -n "$LBD_PID" ] && kill "$LBD_PID" 2>/dev/null && wait "$LBD_PID" 2>/dev/null || true
    scripts/netns.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/netns.sh up >/dev/null
scripts/netns.sh nginx-up

CONF=$RUN/lbd.toml
SOCK=$RUN/lbd.sock
cp examples/alb-seed.toml "$CONF"
$LBCTL check "$CONF"
ip netns exec lbdemo-lb "$LBD" --config "$CONF" --control "$SOCK" 2>"$RUN/lbd.log" &
LBD_PID=$!

stat_json() { $LBCTL stats --json --control "$SOCK" 2>/dev/null; }
wait_until() { # seconds, python condition on the stats document `s`
    local deadline=$((SECONDS + $1))
    while [ $SECONDS -lt $deadline ]; do
        if stat_json | python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if ($2) else 1)" 2>/dev/null; then
            return 0
        fi
        sleep 0.3
    done
    echo "demo: timed out waiting for: $2" >&2
    tail -20 "$RUN/lbd.log" >&2
    return 1
}
server_state() { # group server -> up/down
    echo "all(v['up'] == $2 and v['checked'] for v in s['servers'] if v['group'] == 'sgp-web' and v['server'] == '$1')"
}
echo "demo: waiting for lbd and its health checks"
wait_until 20 "$(server_state ecs01 True) and $(server_state ecs02 True)"

ROWS=()
request() { # step family port
    local step=$1 fam=$2 port=$3 url body result
    if [ "$fam" = 4 ]; then url="http://198.18.0.10:$port/"; else url="http://[2001:db8:18::10]:$port/"; fi
    if body=$(ip netns exec lbdemo-client curl -"$fam" -s -g --max-time 2 "$url"); then
        result="ok     ${body}"
    else
        result="BLOCKED (no answer within 2 s)"
    fi
    ROWS+=("$(printf '%-34s curl -%s %-28s %s' "$step" "$fam" "$url" "$result")")
}
all_four() {
    for fam in 4 6; do for port in 80 81; do request "$1" "$fam" "$port"; done; done
}
reload() {
    cp "$1" "$CONF"
    $LBCTL reload --control "$SOCK" >/dev/null
}

all_four "5: no security group"
reload examples/alb-seed-deny81.toml
all_four "6: sg-alb denies 81 (reload)"
reload examples/alb-seed-deny80-81.toml
all_four "7: sg-alb denies 80, 81 (reload)"
reload examples/alb-seed.toml
all_four "back to 5 (reload)"

scripts/netns.sh nginx-stop 1
echo "demo: nginx on ECS01 stopped; waiting for the health check to notice"
wait_until 30 "$(server_state ecs01 False)"
for i in 1 2 3; do request "ECS01 down: traffic moves" 4 80; done
request "ECS01 down: traffic moves" 6 81
scripts/netns.sh nginx-start 1
wait_until 30 "$(server_state ecs01 True)"
for i in 1 2; do request "ECS01 back up" 4 80; done

echo
printf '%-34s %-36s %s\n' "step" "request" "result"
printf '%s\n' "${ROWS[@]}"
echo
$LBCTL stats --control "$SOCK" | sed -n '/^drops/,/^listeners/p'
