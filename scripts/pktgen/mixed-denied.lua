-- A mix of allowed and denied traffic: of every 10 packets, 8 go to the
-- allowed listener port and 2 to LB_DENY_PORT, which the load balancer's
-- security group denies (20 % denied, as in `bench pipeline`'s mix). lbd
-- forwards the first kind and counts the second under drops/security_group.
package.path = package.path .. ";scripts/pktgen/?.lua;?.lua"
require "Pktgen"
local c = require "common"

c.setup()
local first = c.client_range()
local n = 10
pktgen.set(c.port, "seq_cnt", n)
for i = 0, n - 1 do
  local dport = (i % 5 == 4) and c.deny_port or c.lb_port
  pktgen.seqTable(i, c.port, {
    ["eth_dst_addr"] = c.lb_mac,
    ["eth_src_addr"] = c.gen_mac or "02:00:00:00:00:01",
    ["ip_dst_addr"] = c.vip,
    ["ip_src_addr"] = first .. "/17",
    ["sport"] = 30000 + i,
    ["dport"] = dport,
    ["ethType"] = "ipv4",
    ["ipProto"] = "tcp",
    ["pktSize"] = c.size,
  })
end
c.run(tonumber(os.getenv("SECONDS_RUN") or "30"), "allowed + denied mix")
