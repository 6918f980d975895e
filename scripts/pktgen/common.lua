-- Shared settings of the lbd load profiles for pktgen-dpdk.
--
-- Set through the environment before starting pktgen:
--   LB_VIP        the listener's VIP            (default 198.18.0.10)
--   LB_PORT       an allowed listener port      (default 80)
--   LB_DENY_PORT  a port the load balancer's security group denies (default 81)
--   LB_MAC        Ethernet address of lbd's port facing pktgen (required)
--   GEN_MAC       pktgen's own port address     (default: the port's)
--   GEN_NET       the client addresses to draw from (default 198.18.128.0/17)
--   PKT_SIZE      frame size                    (default 64)
--   RATE          percent of line rate          (default 100)
local M = {}

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default == nil then
      error("set " .. name .. " (see scripts/pktgen/common.lua)")
    end
    return default
  end
  return v
end

M.port = "0"
M.vip = env("LB_VIP", "198.18.0.10")
M.lb_port = tonumber(env("LB_PORT", "80"))
M.deny_port = tonumber(env("LB_DENY_PORT", "81"))
M.lb_mac = env("LB_MAC")
M.gen_mac = os.getenv("GEN_MAC")
M.gen_net = env("GEN_NET", "198.18.128.0/17")
M.size = tonumber(env("PKT_SIZE", "64"))
M.rate = tonumber(env("RATE", "100"))

-- The first and last client address of GEN_NET (an IPv4 /N).
function M.client_range()
  local a, b, c, d, len = M.gen_net:match("(%d+)%.(%d+)%.(%d+)%.(%d+)/(%d+)")
  local base = ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
  local count = 2 ^ (32 - tonumber(len))
  local function dotted(n)
    return string.format("%d.%d.%d.%d", math.floor(n / 16777216) % 256,
      math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  end
  return dotted(base + 1), dotted(base + count - 2)
end

-- Common port settings: TCP toward the VIP through lbd's port.
function M.setup()
  pktgen.stop(M.port)
  pktgen.reset(M.port)
  pktgen.set_mac(M.port, "dst", M.lb_mac)
  if M.gen_mac then
    pktgen.set_mac(M.port, "src", M.gen_mac)
  end
  pktgen.set_proto(M.port, "tcp")
  pktgen.set(M.port, "size", M.size)
  pktgen.set(M.port, "rate", M.rate)
end

-- Runs for `seconds`, then prints what was sent and received.
function M.run(seconds, label)
  pktgen.start(M.port)
  pktgen.delay(seconds * 1000)
  pktgen.stop(M.port)
  pktgen.delay(500)
  local st = pktgen.portStats(M.port, "port")[tonumber(M.port)]
  printf("%s: sent %d packets, received %d, %d s\n", label, st.opackets, st.ipackets, seconds)
end

return M
