-- New TCP connections to a listener: every packet is a SYN of a new flow
-- (client address and port walk a range), so lbd classifies, schedules and
-- inserts a session for each. Compare with `bench pipeline` (new
-- connections) and watch `lbctl stats` (sessions_created, drops).
package.path = package.path .. ";scripts/pktgen/?.lua;?.lua"
require "Pktgen"
local c = require "common"

c.setup()
local first, last = c.client_range()
pktgen.range.dst_mac(c.port, "start", c.lb_mac)
pktgen.range.dst_ip(c.port, "start", c.vip)
pktgen.range.dst_ip(c.port, "inc", "0.0.0.0")
pktgen.range.src_ip(c.port, "start", first)
pktgen.range.src_ip(c.port, "min", first)
pktgen.range.src_ip(c.port, "max", last)
pktgen.range.src_ip(c.port, "inc", "0.0.0.1")
pktgen.range.src_port(c.port, "start", 1024)
pktgen.range.src_port(c.port, "min", 1024)
pktgen.range.src_port(c.port, "max", 65535)
pktgen.range.src_port(c.port, "inc", 1)
pktgen.range.dst_port(c.port, "start", c.lb_port)
pktgen.range.dst_port(c.port, "inc", 0)
pktgen.range.ip_proto(c.port, "tcp")
-- pktgen 21.x and later set SYN-only segments in range mode with
-- `range <port> tcp_flags set syn`; older versions send ACKs, which lbd
-- drops as `no_session` (still a full classification per packet).
if pktgen.range.tcp_flags then
  pktgen.range.tcp_flags(c.port, "set", "syn")
end
pktgen.set_range(c.port, "on")
c.run(tonumber(os.getenv("SECONDS_RUN") or "30"), "new connections")
