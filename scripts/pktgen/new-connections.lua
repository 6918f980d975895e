-- New TCP connections to a listener: every packet is a SYN of a new flow
-- (client address and port walk a range), so lbd classifies, schedules and
-- inserts a session for each. Compare with `bench pipeline` (new
-- connections) and watch `lbctl stats` (sessions_created, drops).
package.path = package.path .. ";scripts/pktgen/?.lua;?.lua"
require "Pktgen"
local c = require "common"

c.setup()
c.new_flows()
pktgen.range.dst_port(c.port, "start", c.lb_port)
pktgen.range.dst_port(c.port, "inc", 0)
pktgen.range.ip_proto(c.port, "tcp")
-- SYN-only segments (range packets are ACKs by default, which lbd drops
-- as `no_session`).
c.range_flags("syn")
pktgen.set_range(c.port, "on")
c.run(tonumber(os.getenv("SECONDS_RUN") or "30"), "new connections")
