#!/usr/bin/env bash
# The seed ALB scenario, step by step, through the load balancer's pipeline:
# what each client request to ports 80 and 81 (IPv4 and IPv6) meets before
# the load balancer has a security group, after "deny 81", and after "deny 80
# and 81".
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p lb-dataplane --bin lbctl
lbctl=target/release/lbctl
$lbctl check examples/alb-seed.toml
$lbctl eval --config examples/alb-seed.toml examples/alb-seed.trace 2>/dev/null >/tmp/lbd-demo.$$.json
python3 - examples/alb-seed.trace /tmp/lbd-demo.$$.json <<'PY'
import json, sys
trace = open(sys.argv[1]).read().splitlines()
results = [json.loads(l) for l in open(sys.argv[2])]
steps = {0: "5: no security group", 1: "6: deny 81", 2: "7: deny 80 and 81"}
print(f"{'step':<22} {'request':<40} {'verdict':<8} {'backend':<8} reason")
for r in results:
    words = trace[r["line"] - 1].split()
    step = steps.get(int(float(words[0])), "")
    req = f"{words[2]} > {words[4]}"
    print(f"{step:<22} {req:<40} {r['verdict']:<8} {r.get('backend', '-'):<8} {r['reason']}")
PY
rm -f /tmp/lbd-demo.$$.json
