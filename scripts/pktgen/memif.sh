#!/usr/bin/env bash
# Runs one pktgen profile against lbd on this machine, over DPDK memif links
# (no NIC, no hugepages): pktgen on lbd's client-side link, `bench
# dataplane-traffic --backends-only` playing the two backends on its
# backend-side link (it answers every TCP segment as the backend would, and
# ARP). lbd runs the configuration `bench dataplane --print-config` writes
# (VIP 198.18.0.10, port 80 allowed, 81 denied by the security group).
# Prints what pktgen sent, lbd's counters over the run (lbctl stats --json,
# after minus before) on one line, and whether they show what the profile
# intends; exits 1 if not.
#
#   sudo scripts/pktgen/memif.sh PROFILE [SECONDS]
#   PROFILE: new-connections | established | mixed-denied; SECONDS default 5
#
# Needs lbd, lbctl and bench built with the dpdk feature (target/release, or
# LBD, LBCTL, BENCH), and pktgen (PKTGEN, or scripts/pktgen/build.sh
# builds it). Everything is bounded in time and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${1:?usage: scripts/pktgen/memif.sh PROFILE [SECONDS]}
secs=${2:-5}
[ -f "scripts/pktgen/$profile.lua" ] || { echo "memif.sh: no profile scripts/pktgen/$profile.lua" >&2; exit 2; }
LBD=${LBD:-target/release/lbd}
LBCTL=${LBCTL:-target/release/lbctl}
BENCH=${BENCH:-target/release/bench}
PKTGEN=${PKTGEN:-$(scripts/pktgen/build.sh)}
for b in "$LBD" "$LBCTL" "$BENCH" "$PKTGEN"; do
    [ -x "$b" ] || { echo "memif.sh: $b is missing (cargo build --release -p lb-dataplane -p lb-bench --features lb-dataplane/dpdk,lb-bench/dpdk)" >&2; exit 2; }
done

dir=$(mktemp -d /tmp/lbpg.XXXXXX)
name=$(basename "$dir")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
    rm -rf "$dir" /var/run/dpdk/lbdpb-"$name" /var/run/dpdk/"$name"-*
}
trap cleanup EXIT

"$BENCH" dataplane --workers 1 --print-config "$dir" > "$dir/lbd.toml"
setsid "$LBD" --config "$dir/lbd.toml" --control "$dir/lbd.sock" > "$dir/lbd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
    "$LBCTL" stats --json --control "$dir/lbd.sock" > "$dir/before.json" 2>/dev/null && break
    sleep 0.1
done
[ -s "$dir/before.json" ] || { echo "memif.sh: lbd did not start:" >&2; cat "$dir/lbd.log" >&2; exit 1; }

setsid "$BENCH" dataplane-traffic --backends-only --max-time "$((secs + 40))s" \
    --eal "--no-huge --no-pci --no-shconf --no-telemetry -m 256 -l 0 --file-prefix $name-b --vdev=net_memif0,role=client,id=0,socket=$dir/int.sock,socket-abstract=no,mac=02:00:00:00:20:02" \
    > "$dir/backends.log" 2>&1 &
pids+=($!)

# pktgen wants a terminal (script), its own prefix and 4 GB of ordinary
# memory; lcore 1 drives port 0; Pktgen.lua comes from its source tree.
src=$(cd "$(dirname "$PKTGEN")/../.." && pwd)
export LB_MAC=02:00:00:00:10:01 GEN_MAC=02:00:00:00:20:01 GEN_NET=${GEN_NET:-198.18.0.128/25}
export SECONDS_RUN=$secs LUA_PATH="$src/?.lua;;"
timeout --kill-after=5 "$((secs + 30))" script -qfec \
    "$PKTGEN -l 0,1 --no-huge -m 4096 --no-pci --no-telemetry --file-prefix $name-p --vdev=net_memif0,role=client,id=0,socket=$dir/ext.sock,socket-abstract=no,mac=$GEN_MAC -- -T -P -m 1.0 -f scripts/pktgen/$profile.lua" \
    /dev/null > "$dir/pktgen.out" 2>&1 < /dev/null || true
sent=$(tr -d '\r' < "$dir/pktgen.out" | grep -ao '[a-z +]*: sent [0-9]* packets, received [0-9]*, [0-9]* s' | tail -1 || true)
"$LBCTL" stats --json --control "$dir/lbd.sock" > "$dir/after.json"
[ -n "$sent" ] || { echo "memif.sh: pktgen did not report:" >&2; tr -d '\r' < "$dir/pktgen.out" | tail -40 >&2; exit 1; }
echo "pktgen $profile: $sent"
python3 - "$profile" "$dir/before.json" "$dir/after.json" <<'PY'
import json, sys
profile, before, after = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
def totals(s):
    t = {k: sum(w[k] for w in s["workers"]) for k in ("rx", "forwarded", "sessions_created")}
    t.update({"drop." + k: v for k, v in s["drops"].items()})
    return t
b, a = totals(before), totals(after)
d = {k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0)}
print("lbd " + profile + ": " + " ".join(f"{k}={v}" for k, v in d.items()))
rx, fwd, new, sg = d.get("rx", 0), d.get("forwarded", 0), d.get("sessions_created", 0), d.get("drop.security_group", 0)
checks = {
    "new-connections": [("new sessions created", new > 1000),
                        ("none denied", sg == 0)],
    "established": [("forwarded", fwd > 1000),
                    ("few new sessions (the flows are open)", new <= 0.1 * fwd),
                    ("none denied", sg == 0)],
    # rx counts the backends' answers too: one per allowed SYN.
    "mixed-denied": [("half the SYNs dropped by the security group", sg > 1000 and 0.8 * sg <= (rx - sg) / 2 <= 1.25 * sg),
                     ("new sessions for the other half", new > 1000)],
}[profile]
ok = True
for what, good in checks:
    print(f"  {'ok  ' if good else 'FAIL'} {what}")
    ok &= good
sys.exit(0 if ok else 1)
PY
