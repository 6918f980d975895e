-- A mix of allowed and denied traffic: SYNs of new flows (client address
-- and port walk a range, as in new-connections.lua), every other one to
-- LB_DENY_PORT, which the load balancer's security group denies. lbd
-- creates a session for the first kind and counts the second under
-- drops/security_group. (pktgen's range mode walks the destination port
-- from LB_PORT to LB_DENY_PORT, so the two ports must be adjacent, as 80
-- and 81 are; the sequence mode, which could weigh them 8 to 2, sends its
-- table's first packet only in this pktgen release.)
package.path = package.path .. ";scripts/pktgen/?.lua;?.lua"
require "Pktgen"
local c = require "common"

if math.abs(c.deny_port - c.lb_port) ~= 1 then
  error("mixed-denied.lua needs LB_PORT and LB_DENY_PORT adjacent (80 and 81)")
end
c.setup()
c.new_flows()
local lo, hi = math.min(c.lb_port, c.deny_port), math.max(c.lb_port, c.deny_port)
pktgen.range.dst_port(c.port, "start", lo)
pktgen.range.dst_port(c.port, "min", lo)
pktgen.range.dst_port(c.port, "max", hi)
pktgen.range.dst_port(c.port, "inc", 1)
pktgen.range.ip_proto(c.port, "tcp")
c.range_flags("syn")
pktgen.set_range(c.port, "on")
c.run(tonumber(os.getenv("SECONDS_RUN") or "30"), "allowed + denied mix")
