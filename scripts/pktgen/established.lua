-- Established flows: a fixed set of client flows (FLOWS, default 4096) sent
-- over and over. The profile opens them first (a second of SYNs of the same
-- flows, which the backends answer); then every packet is an ACK|PSH of
-- an open session: a session-table hit and a NAT rewrite, the fast path
-- `bench pipeline` measures as "established".
package.path = package.path .. ";scripts/pktgen/?.lua;?.lua"
require "Pktgen"
local c = require "common"

local flows = tonumber(os.getenv("FLOWS") or "4096")
c.setup()
local first = c.client_range()
pktgen.range.dst_mac(c.port, "start", c.lb_mac)
pktgen.range.dst_ip(c.port, "start", c.vip)
pktgen.range.dst_ip(c.port, "inc", "0.0.0.0")
pktgen.range.src_ip(c.port, "start", first)
pktgen.range.src_ip(c.port, "inc", "0.0.0.0")
pktgen.range.src_port(c.port, "start", 20000)
pktgen.range.src_port(c.port, "min", 20000)
pktgen.range.src_port(c.port, "max", 20000 + flows - 1)
pktgen.range.src_port(c.port, "inc", 1)
pktgen.range.dst_port(c.port, "start", c.lb_port)
pktgen.range.dst_port(c.port, "inc", 0)
pktgen.range.ip_proto(c.port, "tcp")
pktgen.set_range(c.port, "on")
c.range_flags("syn")
c.send(1)
c.range_flags("ack", "psh")
c.run(tonumber(os.getenv("SECONDS_RUN") or "30"), "established flows")
